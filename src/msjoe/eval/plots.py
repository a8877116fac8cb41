"""Accuracy-versus-frames plots: one PNG per benchmark, one line per sampler, frame budget K on a log2 axis.

The input is the ``scores.json`` document the harness writes (see :mod:`msjoe.eval.harness`). Extracting the
series (:func:`accuracy_series`) is kept apart from drawing them (:func:`plot_accuracy_vs_frames`) so the numbers
behind a picture can be checked without looking at pixels, and so the markdown report knows which benchmarks have
a plot without drawing anything.

Drawing uses matplotlib's object-oriented API on an Agg canvas, never ``pyplot``: no global backend is selected,
no window can open, and a library user's own pyplot state is left alone. matplotlib is imported on use, so
rendering the markdown report does not pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msjoe.atomic import write_bytes_atomically

# 640 x 400 pixels: wide enough for four budgets and a legend, small enough to sit inline in a markdown report.
FIGURE_INCHES = (6.4, 4.0)
FIGURE_DPI = 100


@dataclass(frozen=True)
class SamplerSeries:
    """One line of a plot: a sampler's headline metric at each frame budget it was scored at.

    Attributes:
        sampler: the sampler's name.
        budgets: frame budgets K, increasing.
        values: the headline metric at each budget, in [0, 1] (plotted in %).
    """

    sampler: str
    budgets: tuple[int, ...]
    values: tuple[float, ...]


def plot_filename(benchmark: str) -> str:
    """The plot's file name, relative to the folder holding ``report.md``."""
    return f"accuracy_vs_frames_{benchmark}.png"


def accuracy_series(entry: Mapping[str, Any]) -> tuple[str, list[SamplerSeries]]:
    """``(metric name, one series per sampler)`` from one benchmark's entry of ``scores.json``.

    A run contributes a point when it has a report with a value (runs over items without ground truth have none).
    Samplers keep their order of first appearance in ``entry["runs"]``; a sampler without any point is left out.
    The metric is the benchmark's headline metric (``accuracy``, or ``m_avg`` for MLVU), ``"accuracy"`` when no
    run was scored.
    """
    points: dict[str, dict[int, float]] = {}
    metric = "accuracy"
    for run in entry.get("runs", []):
        report = run.get("report")
        value = report["headline"]["value"] if report else None
        if value is None:
            continue
        metric = report["headline"]["metric"]
        if run.get("k") is not None:  # a rescored file that does not say its budget has no point on the plot
            points.setdefault(run["sampler"], {})[int(run["k"])] = float(value)
    series = [
        SamplerSeries(sampler, tuple(sorted(by_k)), tuple(by_k[k] for k in sorted(by_k)))
        for sampler, by_k in points.items()
    ]
    return metric, series


def plot_accuracy_vs_frames(benchmark: str, metric: str, series: list[SamplerSeries]) -> bytes:
    """The PNG bytes of one benchmark's plot: x = frame budget K (log2 axis, ticks at the budgets), y = metric %."""
    if not series:
        raise ValueError(f"no scored run to plot for benchmark {benchmark!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for line in series:
        axes.plot(line.budgets, [100 * v for v in line.values], marker="o", label=line.sampler)
    budgets = sorted({k for line in series for k in line.budgets})
    axes.set_xscale("log", base=2)
    axes.set_xticks(budgets, [str(k) for k in budgets])
    axes.xaxis.set_minor_locator(NullLocator())  # log axes add unlabeled minor ticks between the budgets
    if len(budgets) == 1:  # a log axis around a single point would otherwise span a factor of ~1e-2..1e2
        axes.set_xlim(budgets[0] / 2, budgets[0] * 2)
    axes.set_xlabel("frames (K)")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(f"{benchmark}: {metric} vs frames")
    axes.grid(True, alpha=0.3)
    axes.legend(title="sampler")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_plots(output_dir: str | Path, scores: Mapping[str, Any]) -> dict[str, Path]:
    """Write one plot per benchmark that has a scored run into ``output_dir`` (atomically); return their paths."""
    out = Path(output_dir)
    written = {}
    for benchmark, entry in scores.get("benchmarks", {}).items():
        metric, series = accuracy_series(entry)
        if series:
            path = out / plot_filename(benchmark)
            write_bytes_atomically(path, plot_accuracy_vs_frames(benchmark, metric, series))
            written[benchmark] = path
    return written
