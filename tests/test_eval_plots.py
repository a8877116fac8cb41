"""Accuracy-versus-frames plots: the series drawn are the scores' headline values, the PNG is written beside
report.md (atomically) and the report embeds it.

The runs' reports are made by the benchmarks' own ``score`` on hand-built items and replies, so the expected
accuracies below are counted by hand from the replies, not copied from the code under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from msjoe.data.benchmarks import get_benchmark
from msjoe.data.schema import QAItem
from msjoe.eval.harness import write_reports
from msjoe.eval.plots import (
    FIGURE_DPI,
    FIGURE_INCHES,
    SamplerSeries,
    accuracy_series,
    plot_accuracy_vs_frames,
    plot_filename,
    write_plots,
)
from msjoe.eval.report import render_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ANSWERS = "ABCDABCD"  # eight items; item i's answer is ANSWERS[i]


def videomme_items() -> list[QAItem]:
    categories = {"duration": "short", "domain": "Knowledge", "sub_category": "Astronomy", "task_type": "OCR Problems"}
    return [
        QAItem(f"{i:03d}-1", f"v{i}.mp4", f"question {i}?", ("w", "x", "y", "z"), answer, categories=categories)
        for i, answer in enumerate(ANSWERS)
    ]


def mlvu_items() -> list[QAItem]:
    tasks = ["plotQA", "plotQA", "plotQA", "plotQA", "needle", "needle", "needle", "needle"]
    return [
        QAItem(f"m{i}", f"v{i}.mp4", f"question {i}?", ("w", "x", "y", "z"), answer, categories={"task": task})
        for i, (answer, task) in enumerate(zip(ANSWERS, tasks, strict=True))
    ]


def replies(correct: int) -> dict[int, str]:
    """Replies to the eight items, the first ``correct`` of them right and the others wrong (the next letter)."""
    letters = "ABCD"
    return {i: answer if i < correct else letters[(letters.index(answer) + 1) % 4] for i, answer in enumerate(ANSWERS)}


def run(benchmark: str, items: list[QAItem], sampler: str, k: int, correct: int | None) -> dict[str, Any]:
    """A run entry as the harness stores it; ``correct=None`` is a run over items without ground truth."""
    report = None
    if correct is not None:
        predictions = {item.id: reply for item, reply in zip(items, replies(correct).values(), strict=True)}
        report = get_benchmark(benchmark).score(items, predictions)
        report.pop("items")
    return {
        "sampler": sampler,
        "k": k,
        "items": len(items),
        "errors": 0,
        "error_ids": [],
        "error_messages": {},
        "predictions": f"predictions/{benchmark}/{sampler}_k{k}.jsonl",
        "report": report,
    }


def entry(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "annotations": "a",
        "videos": "v",
        "limit": None,
        "items": 8,
        "missing_items": [],
        "missing_videos": [],
        "skipped_rows": [],
        "run_info": {},
        "runs": runs,
    }


@pytest.fixture
def scores() -> dict[str, Any]:
    video = videomme_items()
    mlvu = mlvu_items()
    return {
        "benchmarks": {
            "videomme": entry(
                [  # out of order on purpose: budgets must come out sorted
                    run("videomme", video, "bolt", 16, 6),
                    run("videomme", video, "bolt", 8, 4),
                    run("videomme", video, "uniform", 8, 2),
                    run("videomme", video, "uniform", 32, 3),
                    run("videomme", video, "bolt", 64, 8),
                    run("videomme", video, "topk", 8, None),  # no ground truth: no point, so no line
                ]
            ),
            # MLVU's headline is M-Avg: 5 right = plotQA 4/4, needle 1/4 -> (1 + 0.25) / 2.
            "mlvu": entry([run("mlvu", mlvu, "uniform", 4, 5)]),
            "lvbench": entry([run("videomme", video, "bolt", 8, None)]),  # nothing scored: no plot
        }
    }


def test_series_are_the_headline_values_per_sampler_and_budget(scores: dict[str, Any]) -> None:
    metric, series = accuracy_series(scores["benchmarks"]["videomme"])
    assert metric == "accuracy"
    assert series == [
        SamplerSeries("bolt", (8, 16, 64), (4 / 8, 6 / 8, 8 / 8)),
        SamplerSeries("uniform", (8, 32), (2 / 8, 3 / 8)),
    ]
    assert accuracy_series(scores["benchmarks"]["mlvu"]) == ("m_avg", [SamplerSeries("uniform", (4,), (0.625,))])
    assert accuracy_series(scores["benchmarks"]["lvbench"]) == ("accuracy", [])


def test_series_match_the_summary_table(scores: dict[str, Any]) -> None:
    """The plot and the report's table show the same numbers."""
    report = render_markdown(scores)
    _, series = accuracy_series(scores["benchmarks"]["videomme"])
    header = next(line for line in report.splitlines() if line.startswith("| benchmark | sampler"))
    budgets = [int(cell.strip()[2:]) for cell in header.strip("|").split("|")[4:]]  # after the rule set, metric
    for line in series:
        row = next(row for row in report.splitlines() if row.startswith(f"| videomme | {line.sampler} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")[4:]]
        table = {k: float(cell) for k, cell in zip(budgets, cells, strict=True) if cell}
        assert table == {k: round(100 * v, 1) for k, v in zip(line.budgets, line.values, strict=True)}


def test_write_reports_writes_a_png_per_scored_benchmark_and_links_it(scores: dict[str, Any], tmp_path: Path) -> None:
    write_reports(tmp_path, scores)
    width, height = (round(inches * FIGURE_DPI) for inches in FIGURE_INCHES)
    for name in ("videomme", "mlvu"):
        path = tmp_path / plot_filename(name)
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (width, height)
            image.verify()  # checks the chunks' CRCs: a truncated or corrupt file fails here
    assert not (tmp_path / plot_filename("lvbench")).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["scores.json", "report.md", plot_filename("videomme"), plot_filename("mlvu")]
    )  # no temp file left behind

    report = (tmp_path / "report.md").read_text()
    assert f"![videomme: accuracy vs frames]({plot_filename('videomme')})" in report
    assert f"![mlvu: m_avg vs frames]({plot_filename('mlvu')})" in report
    assert plot_filename("lvbench") not in report
    assert json.loads((tmp_path / "scores.json").read_text()) == scores


def test_rewriting_replaces_the_plot(scores: dict[str, Any], tmp_path: Path) -> None:
    first = write_plots(tmp_path, scores)["videomme"].read_bytes()
    scores["benchmarks"]["videomme"]["runs"].append(run("videomme", videomme_items(), "bolt", 128, 1))
    second = write_plots(tmp_path, scores)["videomme"].read_bytes()
    assert second != first and second.startswith(PNG_SIGNATURE)


def test_single_budget_plot_and_empty_series(tmp_path: Path) -> None:
    png = plot_accuracy_vs_frames("x", "accuracy", [SamplerSeries("bolt", (32,), (0.5,))])
    assert png.startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="no scored run to plot for benchmark 'x'"):
        plot_accuracy_vs_frames("x", "accuracy", [])
