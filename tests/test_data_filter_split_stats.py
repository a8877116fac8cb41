"""`msjoe data filter`, `split` and `stats` on hand-counted fixtures, and the evidence recall of eval reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.filters import FilterConfig, filter_items
from msjoe.data.schema import QAItem, read_qa_jsonl, write_qa_jsonl
from msjoe.data.split import split_by_video
from msjoe.data.stats import dataset_stats, write_stats
from msjoe.eval.evidence import evidence_recall, item_recall
from msjoe.eval.report import render_markdown

runner = CliRunner()


def qa(item_id: str, video: str, question: str = "What is shown?", options: tuple[str, ...] = ("red", "blue"),
       answer: str | None = "A", duration: float | None = 100.0, difficulty: float | None = 0.5,
       blind: float | None = 0.0, **extra: Any) -> QAItem:  # fmt: skip
    meta = {**extra.pop("meta", {}), **({} if blind is None else {"blind": {"pass_rate": blind}})}
    return QAItem(id=item_id, video=f"/data/{video}.mp4", question=question, options=options, answer=answer,
                  duration=duration, source="test", difficulty=difficulty, meta=meta, **extra)  # fmt: skip


# Hand-counted: each rule's victims are marked; 13 in, 2 kept.
FIXTURE = [
    qa("i1", "v1", "What is red?"),
    qa("i2", "v1", "what is RED ?"),  # duplicates i1 (same text once normalised)
    qa("i3", "v1", "Another?", options=("Red.", "red")),  # options: A and B are the same
    qa("i4", "v2", answer=None),  # options: no answer
    qa("i5", "v2", "Short?", duration=5.0),  # duration: below 10 s
    qa("i6", "v3", "Unknown length?", duration=None),  # duration: unknown
    qa("i7", "v3", "Easy?", difficulty=1.0),  # pass rate: always correct
    qa("i8", "v4", "Never?", difficulty=0.0),  # pass rate: below 0.1
    qa("i9", "v4", "Blind?", blind=1.0),  # blind: answered without frames
    qa("i10", "v5", "Which way?"),
    qa("i11", "v5", "What time is it now?", answer="B"),
    qa("i12", "v6", "Which way does the man in the red coat walk"),
    qa("i13", "v6", "Which way does the man in the red coat walk now"),  # near-duplicate of i12: Jaccard 9/10
]
ALL_RULES = FilterConfig(
    option_sanity=True, min_duration=10, max_duration=3600, dedupe=True, near_duplicate=0.9, min_difficulty=0.1,
    drop_always_correct=True, drop_blind=True, balance_letters=True, seed=1,
)  # fmt: skip


def test_every_rule_removes_the_hand_counted_items() -> None:
    report = filter_items(FIXTURE, ALL_RULES)
    removed = {result.rule: [item.id for item, _ in result.removed] for result in report.rules}
    assert removed == {
        "options": ["i3", "i4"],
        "duration": ["i5", "i6"],
        "duplicates": ["i2", "i13"],
        "pass_rate": ["i7", "i8"],
        "blind": ["i9"],
        "letter_balance": removed["letter_balance"],
    }
    # Before balancing: i1, i10, i12 answer A and i11 answers B; balancing keeps one A and the B.
    assert sorted(removed["letter_balance"]) in (["i1", "i10"], ["i1", "i12"], ["i10", "i12"])
    assert len(report.kept) == 2 and "i11" in [item.id for item in report.kept]
    assert report.counts() == {"options": 2, "duration": 2, "duplicates": 2, "pass_rate": 2, "blind": 1,
                               "letter_balance": 2}  # fmt: skip
    reasons = {item.id: reason for result in report.rules for item, reason in result.removed}
    assert reasons["i3"] == "options A and B are the same ('red')"
    assert reasons["i5"] == "5 s is shorter than 10 s" and reasons["i6"] == "no known duration"
    assert reasons["i8"] == "c = 0 is below 0.1" and reasons["i2"] == "duplicates item 'i1' about the same video"
    assert filter_items(FIXTURE, ALL_RULES).kept == report.kept  # seeded


def test_rules_not_asked_for_do_not_run_and_a_stricter_threshold_keeps_near_duplicates() -> None:
    assert filter_items(FIXTURE, FilterConfig()).kept == FIXTURE
    report = filter_items(FIXTURE, FilterConfig(dedupe=True, near_duplicate=1.0))
    assert [item.id for item, _ in report.rules[0].removed] == ["i2"]  # i13 is only 0.9 similar


def test_blind_rule_needs_blind_rates() -> None:
    with pytest.raises(ValueError, match=r"1 items have no blind pass rate \(x\): .*calibrate --blind"):
        filter_items([qa("x", "v1", blind=None)], FilterConfig(drop_blind=True))


def test_filter_command_prints_counts_and_lists_removed_items(tmp_path: Path) -> None:
    write_qa_jsonl(tmp_path / "in.jsonl", FIXTURE)
    args = ["data", "filter", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--option-sanity",
            "--min-duration", "10", "--dedupe", "--removed", str(tmp_path / "removed.jsonl")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "13 items in, 7 kept" in result.output
    assert [item.id for item in read_qa_jsonl(tmp_path / "out.jsonl")] == ["i1", "i7", "i8", "i9", "i10", "i11",
                                                                           "i12"]  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "removed.jsonl").read_text().splitlines()]
    assert [(line["id"], line["rule"]) for line in lines] == [("i3", "options"), ("i4", "options"),
                                                              ("i5", "duration"), ("i6", "duration"),
                                                              ("i2", "duplicates"), ("i13", "duplicates")]  # fmt: skip


# --- split -------------------------------------------------------------------------------------------------------
def test_split_by_video_puts_no_video_on_both_sides_and_keeps_needles_with_their_sources() -> None:
    needle = qa("n1", "needle-0", meta={"needle": {"sources": ["/data/v2.mp4", "/data/v9.mp4"]}}, blind=None)
    items = [*FIXTURE, needle, qa("z", "v9")]
    for seed in range(5):
        result = split_by_video(items, val_fraction=0.3, seed=seed)
        train = {v for item in result.train for v in [item.video_key, *item.meta.get("needle", {}).get("sources", [])]}
        val = {v for item in result.val for v in [item.video_key, *item.meta.get("needle", {}).get("sources", [])]}
        assert not train & val and len(result.train) + len(result.val) == len(items)
        assert result.train_videos + result.val_videos == 8  # v1-v6, v9 and the needle's own video
        assert result.val_videos >= 3  # ceil(0.3 * 8)
        sides = {item.id: item in result.val for item in items}
        assert sides["n1"] == sides["i4"] == sides["z"]  # the needle shows v2 and v9
    assert split_by_video(items, val_fraction=0.3, seed=2) == split_by_video(items, val_fraction=0.3, seed=2)
    assert split_by_video(items, val_fraction=0.0).val == []


def test_split_command(tmp_path: Path) -> None:
    write_qa_jsonl(tmp_path / "all.jsonl", FIXTURE)
    result = runner.invoke(app, ["data", "split", str(tmp_path / "all.jsonl"), "--train", str(tmp_path / "t.jsonl"),
                                 "--val", str(tmp_path / "v.jsonl"), "--val-fraction", "0.5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    train, val = read_qa_jsonl(tmp_path / "t.jsonl"), read_qa_jsonl(tmp_path / "v.jsonl")
    assert not {i.video for i in train} & {i.video for i in val} and len(train) + len(val) == 13
    assert f"val: {len(val)} items, 3 videos" in result.output


# --- stats -------------------------------------------------------------------------------------------------------
def test_stats_count_what_the_fixture_holds(tmp_path: Path) -> None:
    items = [*FIXTURE, qa("s", "v7", duration=4000.0, options=("a", "b", "c"), answer="C",
                          evidence=((1.0, 3.5), (10.0, 11.0)))]  # fmt: skip
    stats = dataset_stats(items)
    assert (stats["items"], stats["videos"]) == (14, 7)
    assert stats["options_per_question"] == {"2": 13, "3": 1}
    assert stats["answer_letters"] == {"-": 1, "A": 11, "B": 1, "C": 1}
    # Durations once per video (first item's value): v1 100, v2 100, v3 100, v4 100, v5 100, v6 100, v7 4000.
    assert stats["durations"]["groups"]["1-3 min"] == 6 and stats["durations"]["groups"][">= 60 min"] == 1
    assert stats["durations"]["summary"]["total"] == 4600.0
    histogram = [b["items"] for b in stats["difficulty"]["histogram"]]
    assert histogram == [1, 0, 0, 0, 0, 12, 0, 0, 0, 1]  # c = 0 (i8), twelve c = 0.5, c = 1 (i7) in the last bin
    assert stats["evidence"]["span_seconds"]["count"] == 2 and stats["evidence"]["span_seconds"]["max"] == 2.5
    assert stats["sources"] == {"test": 14}

    write_stats(items, tmp_path / "stats", title="fixture")
    names = sorted(p.name for p in (tmp_path / "stats").iterdir())
    assert names == ["answer_letters.png", "difficulty.png", "durations.png", "span_lengths.png", "stats.json",
                     "stats.md"]  # fmt: skip
    assert all((tmp_path / "stats" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names if n.endswith("png"))
    page = (tmp_path / "stats" / "stats.md").read_text()
    assert "| items | 14 |" in page and "![Difficulty c" in page and "| [0.9, 1.0] | 1 |" in page
    result = runner.invoke(app, ["data", "stats", str(_written(tmp_path, items))])
    assert result.exit_code == 0 and "answer letters" in result.output


def _written(tmp_path: Path, items: list[QAItem]) -> Path:
    return write_qa_jsonl(tmp_path / "items.jsonl", items)


# --- evidence recall ---------------------------------------------------------------------------------------------
def test_evidence_recall_counts_spans_holding_a_chosen_frame() -> None:
    assert item_recall([(10.0, 20.0), (30.0, 31.0)], [5.0, 20.0, 40.0]) == 0.5  # the end is inside
    assert item_recall([(10.0, 20.0)], []) == 0.0
    items = [qa("a", "v1", evidence=((10.0, 20.0),)), qa("b", "v1", evidence=((0.0, 1.0), (5.0, 6.0))), qa("c", "v2")]
    records = {"a": {"chosen_timestamps": [15.0]}, "b": {"chosen_timestamps": [0.5]}, "c": {"chosen_timestamps": []}}
    assert evidence_recall(items, records) == {"value": 0.75, "items": 2}
    assert evidence_recall(items[2:], records) is None


def test_the_run_table_shows_evidence_recall_only_for_datasets_with_spans() -> None:
    run = {"sampler": "bolt", "k": 8, "items": 2, "errors": 0, "error_ids": [], "predictions": "p.jsonl",
           "report": None, "evidence_recall": {"value": 0.75, "items": 2}}  # fmt: skip
    bench = {"annotations": "a", "videos": None, "items": 2, "missing_items": [], "missing_videos": [],
             "skipped_rows": [], "runs": [run]}  # fmt: skip
    page = render_markdown({"benchmarks": {"lvbench": bench}})
    assert "evidence recall % (items)" in page and "| 75.0 (2) |" in page
    bench["runs"] = [{**run, "evidence_recall": None}]
    assert "evidence recall" not in render_markdown({"benchmarks": {"lvbench": bench}})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"near_duplicate": 0.0}, "near_duplicate must be a finite number in (0, 1], got 0.0"),
        ({"max_blind": 1.5}, "max_blind must be a finite number in [0, 1], got 1.5"),
        ({"min_duration": "8"}, "min_duration must be None or a finite number, got '8'"),
        ({"dedupe": "yes"}, "dedupe must be true or false, got 'yes'"),
        ({"min_difficulty": 0.8, "max_difficulty": 0.2}, "min difficulty 0.8 is above max difficulty 0.2"),
    ],
)
def test_filter_config_names_the_field_the_rule_and_the_value(settings: dict[str, Any], message: str) -> None:
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        FilterConfig(**settings)
