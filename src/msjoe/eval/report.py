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


def _runs_by_sampler(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[int]]:
    samplers = list(dict.fromkeys(run["sampler"] for run in runs))
    budgets = sorted({int(run["k"]) for run in runs})
    return samplers, budgets


def _summary_table(benchmarks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per (benchmark, sampler), one column per budget K: the benchmark's headline metric in %."""
    budgets = sorted({int(run["k"]) for bench in benchmarks.values() for run in bench["runs"]})
    rows = []
    for name, bench in benchmarks.items():
        samplers, _ = _runs_by_sampler(bench["runs"])
        by_key = {(run["sampler"], int(run["k"])): run for run in bench["runs"]}
        for sampler in samplers:
            metric = next(
                (r["report"]["headline"]["metric"] for r in bench["runs"] if r["sampler"] == sampler and r["report"]),
                "accuracy",
            )
            cells = []
            for k in budgets:
                run = by_key.get((sampler, k))
                cells.append("" if run is None or not run["report"] else _percent(run["report"]["headline"]["value"]))
            rows.append([name, sampler, metric, *cells])
    return _table(["benchmark", "sampler", "metric", *(f"K={k}" for k in budgets)], rows)


def _run_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Counts behind each number: how many items were answered, failed, unparsed or guessed."""
    rows = []
    for run in runs:
        report = run["report"] or {}
        counts = report.get("counts", {})
        overall = report.get("overall", {})
        rows.append(
            [
                run["sampler"],
                run["k"],
                run["items"],
                overall.get("correct", "–"),
                overall.get("total", "–"),
                run["errors"],
                counts.get("unparsed", "–"),
                counts.get("random_fallback", "–"),
                f"`{run['predictions']}`",
            ]
        )
    header = ["sampler", "K", "items", "correct", "counted", "errors", "unparsed", "random fallback", "predictions"]
    return _table(header, rows)


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
        header = [name, *(f"{run['sampler']} K={run['k']}" for run in scored)]
        lines += [f"#### {name}", "", "Accuracy in % (counted items).", "", *_table(header, rows), ""]
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
    lines += ["Headline metric in % (each benchmark's official scoring; failed items count as wrong).", ""]
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
        policy = next((run["report"]["policy"] for run in bench["runs"] if run["report"]), None)
        if policy is not None:
            lines += [
                "Scoring: " + ", ".join(f"{key} `{value}`" for key, value in policy.items() if value is not None) + ".",
                "",
            ]
        lines += ["### Runs", "", *_run_table(bench["runs"]), ""]
        metric, series = accuracy_series(bench)
        if series:
            lines += [f"![{name}: {metric} vs frames]({plot_filename(name)})", ""]
        lines += _listing("Failed items (counted as wrong)", _failures(bench["runs"]))
        lines += _listing("Missing videos", bench["missing_videos"])
        lines += _listing(
            "Skipped annotation rows", [f"{row['location']}: {row['reason']}" for row in bench["skipped_rows"]]
        )
        breakdowns = _breakdown_tables(bench["runs"])
        if breakdowns:
            lines += ["### Per category", "", *breakdowns]
    return "\n".join(lines).rstrip("\n") + "\n"
