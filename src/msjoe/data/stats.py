"""``msjoe data stats``: what a QA dataset looks like: counts, durations, options per question, answer-letter
balance, the difficulty histogram, evidence-span lengths and sources, as numbers (:func:`dataset_stats`), a
markdown page and PNG plots (:func:`write_stats`).

Plots use matplotlib's object-oriented API on an Agg canvas (as :mod:`msjoe.eval.plots`): no window, no global
pyplot state.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msjoe.atomic import write_bytes_atomically, write_text_atomically
from msjoe.data.schema import QAItem

__all__ = ["DIFFICULTY_BINS", "DURATION_BINS", "dataset_stats", "render_markdown", "write_stats"]

DIFFICULTY_BINS = 10
"""Equal bins over [0, 1]; the last holds c = 1."""
DURATION_BINS: tuple[tuple[str, float, float], ...] = (
    ("< 1 min", 0.0, 60.0),
    ("1-3 min", 60.0, 180.0),
    ("3-10 min", 180.0, 600.0),
    ("10-30 min", 600.0, 1800.0),
    ("30-60 min", 1800.0, 3600.0),
    (">= 60 min", 3600.0, math.inf),
)
"""Duration groups (seconds, ``[low, high)``): long-video training sets are judged by how much is over 10 min."""
MARKDOWN_FILE = "stats.md"
JSON_FILE = "stats.json"
PLOTS = {
    "durations": "durations.png",
    "letters": "answer_letters.png",
    "difficulty": "difficulty.png",
    "spans": "span_lengths.png",
}


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": median,
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
        "total": sum(ordered),
    }


def _difficulty_bin(value: float) -> int:
    return min(int(value * DIFFICULTY_BINS), DIFFICULTY_BINS - 1)


def dataset_stats(items: Sequence[QAItem]) -> dict[str, Any]:
    """The numbers (JSON-serialisable). Durations are counted once per video (the first item's value)."""
    durations: dict[str, float] = {}
    for item in items:
        if item.duration is not None:
            durations.setdefault(item.video_key, item.duration)
    difficulties = [item.difficulty for item in items if item.difficulty is not None]
    difficulty_hist = [0] * DIFFICULTY_BINS
    for value in difficulties:
        difficulty_hist[_difficulty_bin(value)] += 1
    spans = [end - start for item in items for start, end in item.evidence]
    letters = Counter(item.answer or "-" for item in items)
    return {
        "items": len(items),
        "videos": len({item.video_key for item in items}),
        "sources": dict(Counter(item.source or "-" for item in items).most_common()),
        "tasks": dict(Counter(item.task or "-" for item in items).most_common()),
        "durations": {
            "videos_with_duration": len(durations),
            "summary": _summary(list(durations.values())),
            "groups": {label: sum(low <= d < high for d in durations.values()) for label, low, high in DURATION_BINS},
        },
        "options_per_question": {str(n): count for n, count in sorted(Counter(len(i.options) for i in items).items())},
        "answer_letters": {letter: letters[letter] for letter in sorted(letters)},
        "difficulty": {
            "rated": len(difficulties),
            "summary": _summary(difficulties),
            "histogram": [
                {"low": b / DIFFICULTY_BINS, "high": (b + 1) / DIFFICULTY_BINS, "items": difficulty_hist[b]}
                for b in range(DIFFICULTY_BINS)
            ],
        },
        "evidence": {
            "items_with_spans": sum(bool(item.evidence) for item in items),
            "span_seconds": _summary(spans),
        },
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def summary_rows(stats: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(what, value)`` rows of the headline numbers (the printed table and the page's first table)."""
    durations = stats["durations"]["summary"] or {}
    difficulty = stats["difficulty"]["summary"] or {}
    spans = stats["evidence"]["span_seconds"] or {}
    total = sum(stats["answer_letters"].values()) or 1
    letters = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stats["answer_letters"].items())
    return [
        ("items", str(stats["items"])),
        ("videos", str(stats["videos"])),
        ("sources", ", ".join(f"{k} {v}" for k, v in stats["sources"].items())),
        (
            "video duration (s): min / median / mean / max",
            " / ".join(_fmt(durations.get(k)) for k in ("min", "median", "mean", "max")) if durations else "–",
        ),
        ("hours of video", _fmt(durations["total"] / 3600) if durations else "–"),
        ("options per question", ", ".join(f"{k}: {v}" for k, v in stats["options_per_question"].items())),
        ("answer letters", letters),
        ("rated items (difficulty)", f"{stats['difficulty']['rated']}, mean c {_fmt(difficulty.get('mean'))}"),
        ("items with evidence spans", str(stats["evidence"]["items_with_spans"])),
        (
            "span length (s): min / median / max",
            " / ".join(_fmt(spans.get(k)) for k in ("min", "median", "max")) if spans else "–",
        ),
    ]


def render_markdown(stats: Mapping[str, Any], *, title: str, plots: Mapping[str, str]) -> str:
    """The markdown page: headline numbers, then one table per distribution, each with its plot when drawn."""
    lines = [f"# {title}", "", *_table(["", "value"], summary_rows(stats)), ""]
    sections = [
        ("Video durations", "durations", ["duration", "videos"], list(stats["durations"]["groups"].items())),
        ("Answer letters", "letters", ["letter", "items"], list(stats["answer_letters"].items())),
        (
            "Difficulty c (base-model pass rate with uniform frames)",
            "difficulty",
            ["c", "items"],
            [
                (f"[{b['low']:.1f}, {b['high']:.1f}{']' if b['high'] == 1 else ')'}", b["items"])
                for b in stats["difficulty"]["histogram"]
            ],
        ),
        ("Sources", None, ["source", "items"], list(stats["sources"].items())),
        ("Tasks", None, ["task", "items"], list(stats["tasks"].items())),
    ]
    for heading, plot, header, rows in sections:
        lines += [f"## {heading}", "", *_table(header, rows), ""]
        if plot in plots:
            lines += [f"![{heading}]({plots[plot]})", ""]
    if "spans" in plots:
        lines += ["## Evidence span lengths", "", f"![Evidence span lengths]({plots['spans']})", ""]
    return "\n".join(lines)


def _bar_png(labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str, ylabel: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(range(len(values)), values, color="#4878a8")
    axes.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels), default=0) > 4 else 0)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _hist_png(values: Sequence[float], *, title: str, xlabel: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(values, bins=min(30, max(5, len(set(values)))), color="#4878a8")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("items")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_stats(items: Sequence[QAItem], out_dir: str | Path, *, title: str = "QA dataset") -> dict[str, Any]:
    """Write ``stats.json``, the plots that have data and ``stats.md`` (linking them) into ``out_dir``, each
    atomically; return the numbers. A distribution without data (no durations, no difficulty...) has no plot."""
    import json

    out = Path(out_dir)
    stats = dataset_stats(items)
    plots: dict[str, str] = {}
    if stats["durations"]["videos_with_duration"]:
        groups = stats["durations"]["groups"]
        png = _bar_png(list(groups), list(groups.values()), title="Video durations", xlabel="duration", ylabel="videos")
        plots["durations"] = PLOTS["durations"]
        write_bytes_atomically(out / PLOTS["durations"], png)
    if items:
        letters = stats["answer_letters"]
        png = _bar_png(list(letters), list(letters.values()), title="Answer letters", xlabel="letter", ylabel="items")
        plots["letters"] = PLOTS["letters"]
        write_bytes_atomically(out / PLOTS["letters"], png)
    if stats["difficulty"]["rated"]:
        bins = stats["difficulty"]["histogram"]
        labels = [f"{b['low']:.1f}" for b in bins]
        png = _bar_png(labels, [b["items"] for b in bins], title="Difficulty c", xlabel="c (bin start)", ylabel="items")
        plots["difficulty"] = PLOTS["difficulty"]
        write_bytes_atomically(out / PLOTS["difficulty"], png)
    spans = [end - start for item in items for start, end in item.evidence]
    if spans:
        plots["spans"] = PLOTS["spans"]
        write_bytes_atomically(out / PLOTS["spans"], _hist_png(spans, title="Evidence spans", xlabel="seconds"))
    write_text_atomically(out / JSON_FILE, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(out / MARKDOWN_FILE, render_markdown(stats, title=title, plots=plots))
    return stats
