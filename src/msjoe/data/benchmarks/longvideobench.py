"""LongVideoBench: 3,763 web videos with subtitles (8 s to 1 h), referring-reasoning questions with 4-5 options.

Annotations: ``lvb_val.json`` (or ``lvb_test_wo_gt.json``, without answers) of the Hugging Face dataset
``longvideobench/LongVideoBench``: a JSON list with, per question, ``id``, ``video_id``, ``video_path``
(``"<video_id>.mp4"``, relative to the ``videos/`` folder), ``question``, ``question_wo_referring_query``,
``candidates`` (option texts, no labels), ``correct_choice`` (0-based index), ``duration`` (seconds),
``duration_group`` (15, 60, 600 or 3600: the upper bound of the (8, 15], (15, 60], (180, 600] and (900, 3600]
second groups), ``question_category`` (``"S2E"``, ``"T3O"``...), ``topic_category``, ``level``, ``position``,
``subtitle_path``, ``starting_timestamp_for_subtitles`` and ``view_count``. The dataset's parquet files (and
lmms-eval's docs) carry ``option0``..``option4`` instead of ``candidates``, unused ones set to ``"N/A"``; both
are read. Fields from longvideobench/LongVideoBench ``longvideobench/longvideobench_dataset.py`` and lmms-eval
``lmms_eval/tasks/longvideobench/utils.py``.

Scoring: a rule set of :mod:`msjoe.rules` (default ``longvideobench``: lmms-eval's
``longvideobench_process_results`` since commit c0bc79f1, which LongVideoBench's repository defers to, with its
random fallback drawn from a seeded stream; also ``longvideobench_mmmu``, the older MMMU-style parser, and
``msjoe``); accuracy per ``duration_group`` and per ``question_category``, and overall.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msjoe.data.benchmarks.base import (
    LoadResult,
    RowError,
    SkippedRow,
    UnrunnableRow,
    VideoFinder,
    require,
    resolve_annotations,
    score_with_rules,
    split_by_video,
)
from msjoe.data.schema import QAFormatError, QAItem
from msjoe.mllm.prompts import option_letters
from msjoe.rules import RuleSet
from msjoe.rules.score import breakdown, category_values

NAME = "longvideobench"
HF_DATASET_ID = "longvideobench/LongVideoBench"
HF_PATTERNS = ("lvb_val.json",)
DURATION_GROUPS = ("15", "60", "600", "3600")
NOT_AN_OPTION = "N/A"  # filler of unused option<i> columns
_META_FIELDS = (
    "video_id",
    "question_wo_referring_query",
    "topic_category",
    "level",
    "position",
    "subtitle_path",
    "starting_timestamp_for_subtitles",
    "view_count",
)


def load(annotations: str | Path, videos: str | Path | None) -> LoadResult:
    """LongVideoBench questions from ``lvb_val.json`` (a JSON list, or its parquet form), a folder holding it, or
    the Hub id ``longvideobench/LongVideoBench`` (a gated dataset: set ``HF_TOKEN``); ``videos`` is the folder of
    ``video_path`` files (``None``: do not check). Rows without ``correct_choice`` (the test split) get
    ``answer=None``."""
    path = resolve_annotations(annotations, hf_patterns=HF_PATTERNS)
    if path.is_dir():
        path = path / "lvb_val.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} holds no lvb_val.json; pass the annotation file itself")
    records = _read_records(path)
    finder = VideoFinder(videos)
    skipped: list[SkippedRow] = []
    rows = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise RowError(f"expected an object, got {type(record).__name__}")
            rows.append(_item(record, finder))
        except (RowError, QAFormatError) as err:
            skipped.append(SkippedRow(f"{path.name}[{index}]", str(err)))
    return split_by_video(NAME, rows, skipped)


def _read_records(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(records).__name__}")
    return records


def _options(record: dict[str, Any]) -> list[str]:
    if "candidates" in record:
        candidates = require(record, "candidates", list)
    else:  # parquet layout: option0..option4, unused ones "N/A" (lmms-eval stops at the first "N/A")
        candidates = []
        for i in range(5):
            option = record.get(f"option{i}")
            if option is None or option == NOT_AN_OPTION:
                break
            candidates.append(option)
        if not candidates:
            raise RowError("neither 'candidates' nor 'option0'..'option4' is given")
    for i, candidate in enumerate(candidates):
        if not isinstance(candidate, str) or not candidate.strip():
            raise RowError(f"field 'candidates': option {i} must be a non-empty string, got {candidate!r}")
    return [candidate.strip() for candidate in candidates]


def _item(record: dict[str, Any], finder: VideoFinder) -> tuple[QAItem, bool]:
    question_id = str(require(record, "id", (str, int)))
    options = _options(record)
    answer = None
    if record.get("correct_choice") is not None:
        choice = require(record, "correct_choice", int)
        if not 0 <= choice < len(options):
            raise RowError(f"field 'correct_choice' must be in 0..{len(options) - 1}, got {choice}")
        answer = option_letters(len(options))[choice]
    video_path = record.get("video_path")
    video_id = record.get("video_id")
    candidates = [p for p in (video_path, f"{video_id}.mp4" if video_id else None) if isinstance(p, str) and p]
    if not candidates:
        raise RowError("neither 'video_path' nor 'video_id' is given")
    video, exists = finder.find(candidates)
    group = require(record, "duration_group", (int, float, str))
    categories = {
        "duration_group": str(int(group)) if isinstance(group, int | float) else group,
        "question_category": require(record, "question_category", str),
    }
    duration = record.get("duration")
    item = QAItem(
        id=question_id,
        video=video,
        question=require(record, "question", str),
        options=tuple(options),
        answer=answer,
        duration=float(duration) if isinstance(duration, int | float) and not isinstance(duration, bool) else None,
        source=NAME,
        task=categories["question_category"],
        categories=categories,
        meta={name: record[name] for name in _META_FIELDS if record.get(name) is not None},
    )
    return item, exists


def score(
    items: Sequence[QAItem],
    predictions: Mapping[str, str],
    *,
    rules: str | RuleSet | None = None,
    seed: int | None = None,
    unrunnable: Sequence[UnrunnableRow] = (),
) -> dict[str, Any]:
    """LongVideoBench accuracy overall, by ``duration_group`` and by ``question_category``.

    With the default rule set an unreadable reply gets a random option as lmms-eval draws it (``seed``, default
    lmms-eval's 0; draws in item order), listed in the report (``counts["random_fallback"]``,
    ``ids["random_fallback"]``); ``rules="msjoe"`` counts such replies as wrong instead.
    """

    def tables(questions, scored, rule_set):
        return {
            "duration_group": breakdown(questions, scored, category_values("duration_group"), DURATION_GROUPS),
            "question_category": breakdown(questions, scored, category_values("question_category")),
        }, None

    return score_with_rules(NAME, items, predictions, rules, seed, unrunnable, tables)
