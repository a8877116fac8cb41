"""Rescoring a prediction file without any model: ``msjoe score``.

Loads the benchmark's annotations (no videos), reads the replies (any layout :func:`read_predictions` knows),
applies a rule set and returns the same benchmark entry ``msjoe eval`` writes to ``scores.json``, with one run.
With an output folder it also writes ``scores.json`` and ``report.md`` there, keeping the runs already in it
(a run of the same name is replaced), so several prediction files or rule sets can be compared in one report.

A run is named after the prediction file: ``<sampler>_k<K>.jsonl`` (what ``msjoe eval`` writes) gives that
sampler and budget; any other file gives its stem as the sampler and no budget.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from msjoe.data.benchmarks import get_benchmark
from msjoe.eval.harness import _load_scores, write_reports
from msjoe.eval.predictions import read_predictions
from msjoe.rules import get_rules

_RUN_FILE = re.compile(r"(?P<sampler>.+)_k(?P<k>\d+)")


def run_name(predictions: Path) -> tuple[str, int | None]:
    """``(sampler, K)`` for a prediction file: from ``<sampler>_k<K>.jsonl``, else ``(stem, None)``."""
    match = _RUN_FILE.fullmatch(predictions.stem)
    return (match["sampler"], int(match["k"])) if match else (predictions.stem, None)


def rescore(
    benchmark: str,
    annotations: str | Path,
    predictions: str | Path,
    *,
    rules: str | None = None,
    seed: int | None = None,
    id_field: str | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score the replies of ``predictions`` against ``benchmark``'s annotations with a rule set (``None``: the
    benchmark's official one); return the benchmark entry of ``scores.json``. Items without a reply and replies
    matching no item are counted and listed in the run's report (``counts``, ``ids``), never dropped silently."""
    bench = get_benchmark(benchmark)
    rule_set = get_rules(benchmark, rules)  # an unknown name fails before anything is read
    predictions = Path(predictions)
    replies = read_predictions(predictions, benchmark=benchmark, id_field=id_field)
    loaded = bench.load(annotations, None)
    items = [*loaded.items, *loaded.missing]
    report = bench.score(items, replies, rules=rule_set, seed=seed, unrunnable=loaded.unrunnable)
    report.pop("items")
    sampler, k = run_name(predictions)
    run = {
        "sampler": sampler,
        "k": k,
        "items": len(items),
        "errors": 0,
        "error_ids": [],
        "error_messages": {},
        "predictions": str(predictions),
        "report": report,
    }
    entry = {
        "annotations": str(annotations),
        "videos": None,
        "limit": None,
        "items": len(items),
        "missing_items": [],
        "missing_videos": [],
        "skipped_rows": [row.to_dict() for row in loaded.skipped],
        "run_info": {"rescored": str(predictions)},
        "runs": [run],
    }
    if output_dir is not None:
        out = Path(output_dir)
        scores = _load_scores(out / "scores.json")
        previous = scores["benchmarks"].get(bench.name, {})
        kept = [
            r
            for r in previous.get("runs", [])
            if (r["sampler"], r["k"], (r.get("report") or {}).get("rules", {}).get("name"))
            != (sampler, k, rule_set.name)
        ]
        entry = {**entry, "runs": [*kept, run]}
        scores["benchmarks"][bench.name] = entry
        write_reports(out, scores)
    return entry
