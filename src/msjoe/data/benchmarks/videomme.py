"""Video-MME: 900 videos (short < 2 min, medium 4-15 min, long 30-60 min), 2,700 four-option questions.

Annotations: the parquet file of the Hugging Face dataset ``lmms-lab/Video-MME`` (``videomme/test-*.parquet``),
one row per question with ``video_id`` (``"001"``), ``duration`` (the bucket ``short``/``medium``/``long``, not
seconds), ``domain``, ``sub_category``, ``url``, ``videoID`` (the YouTube id, which names the video file),
``question_id`` (``"001-1"``), ``task_type``, ``question``, ``options`` (``["A. ...", "B. ...", ...]``) and
``answer`` (a letter). Videos are ``<videoID>.mp4`` (``.MP4`` and ``.mkv`` occur too, as lmms-eval's
``videomme_doc_to_visual`` notes). Fields read from the dataset card and lmms-eval's
``lmms_eval/tasks/videomme/utils.py`` (EvolvingLMMs-Lab/lmms-eval).

Scoring: a rule set of :mod:`msjoe.rules` (default ``videomme``: the ``eval_your_results.py`` the Video-MME
README links to; also ``videomme_legacy``, ``videomme_lmms_eval``, ``msjoe``); accuracies per duration bucket,
domain ("video category"), sub-category and task type, plus overall. The parquet gives no duration in seconds,
so items have ``duration=None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msjoe.data.benchmarks.base import (
    LoadResult,
    RowError,
    SkippedRow,
    UnrunnableRow,
    VideoFinder,
    find_files,
    require,
    resolve_annotations,
    score_with_rules,
    split_by_video,
)
from msjoe.data.schema import QAFormatError, QAItem
from msjoe.mllm.prompts import normalize_options
from msjoe.rules import RuleSet
from msjoe.rules.score import breakdown, category_values

NAME = "videomme"
HF_DATASET_ID = "lmms-lab/Video-MME"
HF_PATTERNS = ("videomme/*.parquet",)

# Listing order of the official script (groups absent from the items are left out of reports).
DURATIONS = ("short", "medium", "long")
DOMAINS = ("Knowledge", "Film & Television", "Sports Competition", "Artistic Performance", "Life Record",
           "Multilingual")  # fmt: skip
SUB_CATEGORIES = (
    "Humanity & History", "Literature & Art", "Biology & Medicine", "Finance & Commerce", "Astronomy", "Geography",
    "Law", "Life Tip", "Technology", "Animation", "Movie & TV Show", "Documentary", "News Report", "Esports",
    "Basketball", "Football", "Athletics", "Other Sports", "Stage Play", "Magic Show", "Variety Show", "Acrobatics",
    "Handicraft", "Food", "Fashion", "Daily Life", "Travel", "Pet & Animal", "Exercise", "Multilingual",
)  # fmt: skip
TASK_TYPES = (
    "Temporal Perception", "Spatial Perception", "Attribute Perception", "Action Recognition", "Object Recognition",
    "OCR Problems", "Counting Problem", "Temporal Reasoning", "Spatial Reasoning", "Action Reasoning",
    "Object Reasoning", "Information Synopsis",
)  # fmt: skip


def load(annotations: str | Path, videos: str | Path | None) -> LoadResult:
    """Video-MME questions from a parquet file, a folder holding one (searched recursively), or the Hub id
    ``lmms-lab/Video-MME``; ``videos`` is the folder of ``<videoID>.mp4`` files (``None``: do not check)."""
    import pyarrow.parquet as pq  # imported on use: listing or importing the registry stays light

    path = resolve_annotations(annotations, hf_patterns=HF_PATTERNS)
    files = [path] if path.is_file() else find_files(path, ("videomme/*.parquet", "**/*.parquet"), "parquet file")
    finder = VideoFinder(videos)
    skipped: list[SkippedRow] = []
    rows = []
    for file in files:
        try:
            records = pq.read_table(file).to_pylist()
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise ValueError(f"{file}: cannot read as parquet: {err}") from err
        for index, record in enumerate(records):
            try:
                rows.append(_item(record, finder))
            except (RowError, QAFormatError) as err:
                skipped.append(SkippedRow(f"{file.name}[{index}]", str(err)))
    return split_by_video(NAME, rows, skipped)


def _item(record: dict[str, Any], finder: VideoFinder) -> tuple[QAItem, bool]:
    question_id = require(record, "question_id", str)
    video_id = require(record, "videoID", str)
    video, exists = finder.find([f"{video_id}.mp4", f"{video_id}.MP4", f"{video_id}.mkv"])
    options = require(record, "options", list)
    try:
        texts = normalize_options(options)  # drops the "A. " labels
    except ValueError as err:
        raise RowError(f"field 'options': {err}") from None
    categories = {name: require(record, name, str) for name in ("duration", "domain", "sub_category", "task_type")}
    answer = require(record, "answer", str).strip()
    meta = {"videoID": video_id}
    for name in ("video_id", "url"):
        if isinstance(record.get(name), str):
            meta[name] = record[name]
    item = QAItem(
        id=question_id,
        video=video,
        question=require(record, "question", str),
        options=tuple(texts),
        answer=answer,
        source=NAME,
        task=categories["task_type"],
        categories=categories,
        meta=meta,
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
    """Video-MME accuracy overall and by ``duration``, ``domain``, ``sub_category`` and ``task_type``.

    ``predictions`` maps question ids to raw replies (see :func:`msjoe.eval.predictions.read_predictions`, which
    also reads Video-MME's official results file); ``rules`` names a rule set (``None``: the official one). The
    report layout is described in :func:`msjoe.rules.score.build_report`.
    """

    def tables(questions, scored, rule_set):
        def table(name, order):
            return breakdown(questions, scored, category_values(name), order, repeated_groups=rule_set.repeated_groups)

        return {
            "duration": table("duration", DURATIONS),
            "domain": table("domain", DOMAINS),
            "sub_category": table("sub_category", SUB_CATEGORIES),
            "task_type": table("task_type", TASK_TYPES),
        }, None

    return score_with_rules(NAME, items, predictions, rules, seed, unrunnable, tables)
