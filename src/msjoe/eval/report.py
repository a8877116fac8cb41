"""Markdown rendering of evaluation scores.

The input is the ``scores.json`` document the harness writes (see :mod:`msjoe.eval.harness`):
``{"benchmarks": {name: {"runs": [...], "missing_items": [...], ...}}}``. Rendering is a pure function of it, so
a report can be rebuilt from ``scores.json`` alone. Benchmarks with a scored run embed their accuracy-versus-frames
plot (:mod:`msjoe.eval.plots`), which the harness writes beside ``report.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from msjoe.eval.plots import accuracy_series, plot_filename

# Lists longer than this are cut in the markdown (scores.json keeps them whole).
MAX_LISTED = 50


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _cell(text: object) -> str:
    """Table-safe text: pipes would split a cell, newlines would end the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _budget(run: Mapping[str, Any]) -> int | None:
    """The run's frame budget; ``None`` for a rescored prediction file that does not say (``msjoe score``)."""
    return None if run.get("k") is None else int(run["k"])


def _rules_name(run: Mapping[str, Any]) -> str:
    report = run.get("report") or {}
    return str(report.get("rules", {}).get("name", "–"))


def _summary_table(benchmarks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per (benchmark, sampler, rule set), one column per budget K: the headline metric in %."""
    known = sorted({k for bench in benchmarks.values() for run in bench["runs"] if (k := _budget(run)) is not None})
    unknown = any(_budget(run) is None for bench in benchmarks.values() for run in bench["runs"])
    budgets: list[int | None] = [*known, *([None] if unknown else [])]
    rows = []
    for name, bench in benchmarks.items():
        by_key = {(run["sampler"], _rules_name(run), _budget(run)): run for run in bench["runs"]}
        for sampler, rules in dict.fromkeys((run["sampler"], _rules_name(run)) for run in bench["runs"]):
            metric = next(
                (r["report"]["headline"]["metric"] for r in bench["runs"] if r["sampler"] == sampler and r["report"]),
                "accuracy",
            )
            cells = []
            for k in budgets:
                run = by_key.get((sampler, rules, k))
                cells.append("" if run is None or not run["report"] else _percent(run["report"]["headline"]["value"]))
            rows.append([name, sampler, f"`{rules}`", metric, *cells])
    header = ["benchmark", "sampler", "rule set", "metric", *(f"K={'–' if k is None else k}" for k in budgets)]
    return _table(header, rows)


_COUNTS_AS = {
    "wrong": "counts as wrong",
    "exclude": "is left out of every count",
    "random": "gets a random option",
    "as_empty": "is scored as the empty reply",
}


def _rules_lines(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each rule set the runs were scored with: its name, what it follows (with links) and how it counts."""
    lines = []
    rule_sets = {r["report"]["rules"]["name"]: r["report"]["rules"] for r in runs if r["report"]}
    for name, rules in rule_sets.items():
        sources = "; ".join(
            f"[{src['repository']} `{src['path']}` @ {src['commit'][:8]}]({src['url']})" for src in rules["sources"]
        )
        follows = f"follows {sources}" if sources else "msjoe's own reading, not an official score"
        seed = f", seed {rules['seed']}" if rules.get("seed") is not None else ""
        lines += [
            f"Scored with rule set `{name}`: {follows}. Reads: {rules['summary']}. A reply it reads nothing in "
            f"{_COUNTS_AS[rules['unparsed']]}{seed}; an item without a reply {_COUNTS_AS[rules['missing']]}.",
            "",
        ]
    return lines


def _run_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Counts behind each number: how many items were answered, failed, unparsed or guessed; and, for a dataset
    with evidence spans, the evidence recall of each run's key frames (:mod:`msjoe.eval.evidence`)."""
    with_spans = any(run.get("evidence_recall") for run in runs)
    rows = []
    for run in runs:
        report = run["report"] or {}
        counts = report.get("counts", {})
        overall = report.get("overall", {})
        rows.append(
            [
                run["sampler"],
                "–" if run.get("k") is None else run["k"],
                f"`{_rules_name(run)}`",
                run["items"],
                overall.get("correct", "–"),
                overall.get("total", "–"),
                run["errors"],
                counts.get("unparsed", "–"),
                counts.get("random_fallback", "–"),
                counts.get("missing_predictions", "–"),
                counts.get("unknown_prediction_ids", "–"),
                *([_recall(run.get("evidence_recall"))] if with_spans else []),
                f"`{run['predictions']}`",
            ]
        )
    header = [
        "sampler", "K", "rule set", "items", "correct", "counted", "errors", "unparsed", "random fallback",
        "no reply", "replies matching no item", *(["evidence recall % (items)"] if with_spans else []), "predictions",
    ]  # fmt: skip
    return _table(header, rows)


def _recall(recall: Mapping[str, Any] | None) -> str:
    return "–" if not recall else f"{_percent(recall['value'])} ({recall['items']})"


def _breakdown_tables(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """For each breakdown (duration, task type...), groups as rows and (sampler, K) runs as columns, in %."""
    scored = [run for run in runs if run["report"]]
    names = list(dict.fromkeys(name for run in scored for name in run["report"]["breakdowns"]))
    lines: list[str] = []
    for name in names:
        groups = list(dict.fromkeys(g for run in scored for g in run["report"]["breakdowns"].get(name, {})))
        if not groups:
            continue
        rows = []
        for group in groups:
            cells = []
            for run in scored:
                tally = run["report"]["breakdowns"].get(name, {}).get(group)
                cells.append("" if tally is None else f"{_percent(tally['accuracy'])} ({tally['total']})")
            rows.append([group, *cells])
        header = [name, *(_run_label(run) for run in scored)]
        lines += [f"#### {name}", "", "Accuracy in % (counted items).", "", *_table(header, rows), ""]
    return lines


def _run_label(run: Mapping[str, Any]) -> str:
    budget = "" if run.get("k") is None else f" K={run['k']}"
    return f"{run['sampler']}{budget} ({_rules_name(run)})"


def _adjusted_ids(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per run, the items without a reply and the replies that match no item: never dropped silently."""
    lines = []
    for run in runs:
        ids = (run.get("report") or {}).get("ids", {})
        for key, what in (("missing_predictions", "no reply"), ("unknown_predictions", "reply matching no item")):
            if ids.get(key):
                shown = ", ".join(str(i) for i in ids[key][:MAX_LISTED])
                more = f" and {len(ids[key]) - MAX_LISTED} more (see scores.json)" if len(ids[key]) > MAX_LISTED else ""
                lines.append(f"{_run_label(run)}, {what} ({len(ids[key])}): {shown}{more}")
    return lines


def _failures(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per failed item: its id, the runs it failed in, and the first error message."""
    runs_of: dict[str, list[str]] = {}
    message_of: dict[str, str] = {}
    for run in runs:
        for item_id in run["error_ids"]:
            runs_of.setdefault(item_id, []).append(f"{run['sampler']} K={run['k']}")
            message_of.setdefault(item_id, str(run.get("error_messages", {}).get(item_id) or ""))
    everywhere = len(runs)
    return [
        f"{item_id} ({'all runs' if len(names) == everywhere else ', '.join(names)}): {message_of[item_id][:200]}"
        for item_id, names in runs_of.items()
    ]


def _listing(title: str, values: Sequence[object]) -> list[str]:
    if not values:
        return []
    shown = [f"- `{_cell(v)}`" for v in values[:MAX_LISTED]]
    more = [f"- ... and {len(values) - MAX_LISTED} more (see scores.json)"] if len(values) > MAX_LISTED else []
    return [f"{title} ({len(values)}):", "", *shown, *more, ""]


def render_markdown(scores: Mapping[str, Any]) -> str:
    """The report: a summary table benchmark × sampler × K with each benchmark's headline metric, then per
    benchmark the counts, its accuracy-versus-frames plot, missing videos, failed items and per-category
    breakdowns."""
    benchmarks: Mapping[str, Mapping[str, Any]] = scores.get("benchmarks", {})
    lines = ["# msjoe evaluation", ""]
    if not benchmarks:
        return "\n".join([*lines, "No runs yet.", ""])
    lines += ["Headline metric in %, scored with the rule set named in each row (see each benchmark's section).", ""]
    lines += [*_summary_table(benchmarks), ""]
    for name, bench in benchmarks.items():
        lines += [f"## {name}", ""]
        lines += [f"Annotations `{bench['annotations']}`, videos `{bench['videos']}`."]
        limit = f" (first {bench['limit']}, `--limit`)" if bench.get("limit") is not None else ""
        lines += [
            f"Items run: {bench['items']}{limit}; items whose video is missing: {len(bench['missing_items'])}; "
            f"malformed annotation rows skipped: {len(bench['skipped_rows'])}.",
            "",
        ]
        lines += _rules_lines(bench["runs"])
        lines += ["### Runs", "", *_run_table(bench["runs"]), ""]
        metric, series = accuracy_series(bench)
        if series:
            lines += [f"![{name}: {metric} vs frames]({plot_filename(name)})", ""]
        lines += _listing(
            "Failed items (no reply: counted as the rule set counts a missing reply)", _failures(bench["runs"])
        )
        lines += _listing("Items without a reply, replies matching no item", _adjusted_ids(bench["runs"]))
        lines += _listing("Missing videos", bench["missing_videos"])
        lines += _listing(
            "Skipped annotation rows", [f"{row['location']}: {row['reason']}" for row in bench["skipped_rows"]]
        )
        breakdowns = _breakdown_tables(bench["runs"])
        if breakdowns:
            lines += ["### Per category", "", *breakdowns]
    return "\n".join(lines).rstrip("\n") + "\n"
