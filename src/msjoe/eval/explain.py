"""Explain views of benchmark items, so a researcher can browse why a run answered as it did (wrong answers first).

Layout under a run's output folder ``out``::

    out/explain/index.html                                     every explained item: verdict, letters, a link
    out/explain/<benchmark>/<sampler>_k<K>/<item id>.html      one explain view per item (or .png)

Written by ``msjoe eval ... --explain-items N`` at the end of a run, or later from the run folder alone by
``msjoe explain OUT``. A prediction line keeps the queries, the chosen timestamps, the reply and the verdict, not
the similarity matrix: the view recomputes it from the feature cache with the run's CLIP model (the videos were
indexed during the run, so nothing is decoded for it; with another encoder or cache they are indexed again), and
the sampler's probabilities from that. The candidate grid and the preview frames follow from the run's settings
(``fps``, ``max_frames``, K) stored beside the predictions in ``<sampler>_k<K>.run.json``.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msjoe.atomic import write_text_atomically
from msjoe.cache import FeatureCache
from msjoe.errors import MsjoeError
from msjoe.eval.harness import PredictionLog
from msjoe.explain import Explanation, html_page
from msjoe.features import DualEncoder
from msjoe.index import index_video
from msjoe.pipeline import build_sampler, preview_indices, query_similarity
from msjoe.samplers import Sampler

logger = logging.getLogger(__name__)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


EXPLAIN_DIR = "explain"
INDEX_FILE = "index.html"
# A chosen timestamp must be a candidate of the grid the view rebuilds; more than this apart means the cache or
# the settings differ from the run's.
_TIME_TOLERANCE_S = 1e-3
_RUN_FILE = re.compile(r"^(?P<sampler>.+)_k(?P<k>\d+)$")


@dataclass(frozen=True)
class RunFiles:
    """One (benchmark, sampler, K) run of an output folder: its prediction file and settings."""

    benchmark: str
    sampler: str
    k: int
    predictions: Path
    settings: dict[str, Any]


@dataclass(frozen=True)
class ExplainedItem:
    """One line of the index: where the view went (or why there is none)."""

    run: RunFiles
    record: dict[str, Any]
    path: Path | None
    problem: str | None = None


def find_runs(
    output_dir: str | Path,
    *,
    benchmark: str | None = None,
    samplers: Iterable[str] | None = None,
    budgets: Iterable[int] | None = None,
) -> list[RunFiles]:
    """The runs under ``output_dir/predictions`` (optionally only some benchmarks, samplers, budgets)."""
    root = Path(output_dir) / "predictions"
    wanted_samplers = set(samplers) if samplers is not None else None
    wanted_budgets = {int(k) for k in budgets} if budgets is not None else None
    runs = []
    for path in sorted(root.glob("*/*.jsonl")):
        match = _RUN_FILE.match(path.stem)
        if match is None or ".rank" in path.stem:  # shard files of an unfinished multi-process run
            continue
        sampler, k = match["sampler"], int(match["k"])
        if benchmark is not None and path.parent.name != benchmark:
            continue
        if (wanted_samplers is not None and sampler not in wanted_samplers) or (
            wanted_budgets is not None and k not in wanted_budgets
        ):
            continue
        settings_path = path.with_suffix(".run.json")
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        runs.append(RunFiles(path.parent.name, sampler, k, path, settings))
    return runs


def pick_records(
    records: Iterable[Mapping[str, Any]],
    limit: int | None,
    *,
    ids: Sequence[str] | None = None,
    wrong_only: bool = False,
) -> list[dict[str, Any]]:
    """The records to explain: those named by ``ids`` (in that order), else wrong answers first (failed items
    count as wrong), then unscored ones, then right ones, each in file order; at most ``limit``."""
    records = [dict(r) for r in records]
    if ids is not None:
        by_id = {r["id"]: r for r in records}
        return [by_id[i] for i in ids if i in by_id][:limit]
    rank = {False: 0, None: 1, True: 2}
    ordered = sorted(records, key=lambda r: rank.get(r.get("correct"), 1))
    if wrong_only:
        ordered = [r for r in ordered if r.get("correct") is False]
    return ordered[:limit]


def item_filename(item_id: str, suffix: str = ".html") -> str:
    """A file name for ``item_id`` that is safe on every file system (ids can hold ``/`` or spaces); a short hash
    keeps two ids that clean up to the same text apart."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:80].lstrip(".") or "item"
    if clean != item_id:
        clean += "-" + hashlib.sha256(item_id.encode()).hexdigest()[:8]
    return clean + suffix


def explanation_from_record(
    record: Mapping[str, Any], run: RunFiles, encoder: DualEncoder, cache: FeatureCache, sampler: Sampler
) -> Explanation:
    """The explain view of one prediction line (see the module notes for what is recomputed)."""
    settings = run.settings
    fps = float(settings.get("fps", 1.0))
    max_frames = int(settings.get("max_frames", 4096))
    features = index_video(record["video"], encoder, cache, fps=fps, max_frames=max_frames)
    candidates = np.asarray(features.timestamps, dtype=np.float64)
    chosen = []
    for t in record.get("chosen_timestamps") or []:
        nearest = int(np.abs(candidates - float(t)).argmin())
        if abs(candidates[nearest] - float(t)) > _TIME_TOLERANCE_S:
            raise MsjoeError(
                f"chosen time {t} s is not a candidate of {record['video']} at {fps} fps (nearest "
                f"{candidates[nearest]} s): the cache or the settings differ from the run's"
            )
        chosen.append(nearest)
    queries = list(record.get("queries") or [])
    sim = query_similarity(encoder, queries, features) if queries else None
    probabilities = sampler.probabilities(sim) if sim is not None else None
    previews = [float(candidates[i]) for i in preview_indices(len(candidates), run.k)] if queries else []
    verdict = {True: "right", False: "wrong", None: "not scored"}[record.get("correct")]
    return Explanation(
        candidates,
        chosen,
        video=str(record["video"]),
        queries=queries,
        similarity=None if sim is None else sim.numpy(),
        probabilities=None if probabilities is None else probabilities.numpy(),
        preview_timestamps=previews,
        question=record.get("question"),
        options=list(record.get("options") or []),
        reply=record.get("reply"),
        letter=record.get("scored_letter") or record.get("letter"),
        status=record.get("status"),
        correct_letter=record.get("answer"),
        queries_from_question=bool(record.get("queries_from_question")),
        timings={k: float(v) for k, v in (record.get("timings") or {}).items()},
        settings={
            "benchmark": run.benchmark,
            "item": record["id"],
            "mllm": settings.get("mllm"),
            "model": settings.get("model"),
            "clip": settings.get("clip"),
            "sampler": run.sampler,
            "k": run.k,
            "fps": fps,
        },
        title=f"{run.benchmark} · {record['id']} · {run.sampler} K={run.k}: {verdict}",
        error=record.get("error"),
    )


def explain_items(
    output_dir: str | Path,
    encoder: DualEncoder,
    cache: FeatureCache,
    *,
    runs: Sequence[RunFiles] | None = None,
    limit: int | None = 20,
    ids: Sequence[str] | None = None,
    wrong_only: bool = False,
    suffix: str = ".html",
    sampler_for: Callable[[RunFiles], Sampler] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the explain views of up to ``limit`` items of each run (see :func:`pick_records`) and the index
    page linking them; return the index page's path. An item that cannot be explained (its video is gone) is
    listed in the index with the reason; the others are still written.

    ``sampler_for`` builds a run's sampler (default: by name, with the encoder's logit scale and the run's
    checkpoint), for the probabilities.
    """
    out = Path(output_dir)
    runs = find_runs(out) if runs is None else list(runs)
    if not runs:
        raise MsjoeError(
            f"{out} holds no predictions (expected {out / 'predictions'}/<benchmark>/<sampler>_k<K>.jsonl)"
        )
    if sampler_for is None:

        def sampler_for(run: RunFiles) -> Sampler:
            return build_sampler(
                run.sampler, logit_scale=encoder.logit_scale, checkpoint=run.settings.get("sampler_checkpoint")
            )

    chosen = [
        (run, record)
        for run in runs
        for record in pick_records(
            PredictionLog(run.predictions).records.values(), limit, ids=ids, wrong_only=wrong_only
        )
    ]
    explained = []
    samplers: dict[Path, Sampler] = {}
    for done, (run, record) in enumerate(chosen):
        path = out / EXPLAIN_DIR / run.benchmark / f"{run.sampler}_k{run.k}" / item_filename(record["id"], suffix)
        try:
            if run.predictions not in samplers:
                samplers[run.predictions] = sampler_for(run)
            explanation_from_record(record, run, encoder, cache, samplers[run.predictions]).save(path)
            explained.append(ExplainedItem(run, record, path))
        except (MsjoeError, ValueError, OSError) as error:
            logger.warning("cannot explain %s (%s K=%d): %s", record["id"], run.sampler, run.k, error)
            explained.append(ExplainedItem(run, record, None, str(error)))
        if progress is not None:
            progress(done + 1, len(chosen))
    return write_text_atomically(out / EXPLAIN_DIR / INDEX_FILE, render_index(explained, out / EXPLAIN_DIR))


def render_index(items: Sequence[ExplainedItem], folder: Path) -> str:
    """The index page: one row per item with its run, verdict, letters and a link to its view."""
    rows = []
    for item in items:
        record = item.record
        verdict = {True: "right", False: "wrong", None: "not scored"}[record.get("correct")]
        if item.path is not None:
            link = f'<a href="{_e(item.path.relative_to(folder).as_posix())}">{_e(record["id"])}</a>'
        else:
            link = f"{_e(record['id'])} <span class=note>(no view: {_e(item.problem)})</span>"
        rows.append(
            f'<tr class="item"><td>{_e(item.run.benchmark)}</td><td>{_e(item.run.sampler)}</td>'
            f"<td>{item.run.k}</td><td>{link}</td><td class={verdict.replace(' ', '-')}>{verdict}</td>"
            f"<td>{_e(record.get('scored_letter') or record.get('letter') or '-')}</td>"
            f"<td>{_e(record.get('answer') or '-')}</td><td>{_e(record.get('question') or '')}</td></tr>"
        )
    header = "<tr><th>benchmark</th><th>sampler</th><th>K</th><th>item</th><th>verdict</th><th>answered</th>"
    header += "<th>truth</th><th>question</th></tr>"
    body = [
        "<h1>Explained items</h1>",
        f'<p class="note">{len(items)} items, wrong answers first. Each view recomputes the similarity from the '
        "feature cache with the run's encoder.</p>",
        f"<table>{header}{''.join(rows)}</table>",
    ]
    return html_page("Explained items", body)


def explain_after_eval(qa: Any, config: Any, limit: int) -> Path:
    """``msjoe eval --explain-items N``: the views of N items of each (sampler, K) just run, with the run's own
    encoder and cache (``qa``, a :class:`~msjoe.pipeline.VideoQA`; ``config``, its ``EvalConfig``)."""
    from msjoe.data.benchmarks import get_benchmark

    runs = find_runs(
        config.output_dir,
        benchmark=get_benchmark(config.benchmark).name,
        samplers=config.samplers,
        budgets=config.budgets,
    )
    return explain_items(
        config.output_dir,
        qa.encoder,
        qa.cache,
        runs=runs,
        limit=limit,
        sampler_for=lambda run: qa.sampler(run.sampler, run.settings.get("sampler_checkpoint")),
    )
