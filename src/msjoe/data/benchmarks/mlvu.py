"""MLVU (dev set): long videos (3 min to 2 h), seven multiple-choice tasks; the headline M-Avg is the mean of the
per-task accuracies.

Annotations: one JSON file a task in MLVU's ``json/`` folder (``1_plotQA.json``, ``2_needle.json``,
``3_ego.json``, ``4_count.json``, ``5_order.json``, ``6_anomaly_reco.json``, ``7_topic_reasoning.json``; the
generation tasks ``8_sub_scene.json`` and ``9_summary.json`` have no options and are skipped), each a list of
``{"video": "movie101_66.mp4", "duration": 246, "question": ..., "candidates": [texts], "answer": <the correct
candidate's text>, "question_type": "plotQA"}``. Videos sit in one folder a task: ``video/<json stem>/`` in the
Hugging Face copy (``video/1_plotQA/movie101_66.mp4``), ``video/<task>/`` in older scripts; both are looked
for, then the video folder itself. Fields from JUNJIE99/MLVU ``videochat2/choice_bench.py`` (its ``qa_template``
letters the candidates in order and finds the answer by text) and third-party loaders of the same files.
Questions have no id, so items are named ``<json stem>/<video stem>_<n>``, ``n`` counting that video's
questions in the file.

Scoring: MLVU's ``choice_bench.py`` (``check_ans``) and lmms-eval's ``lmms_eval/tasks/mlvu/utils.py``: exact
letter match, accuracy per task, M-Avg = the unweighted mean of the per-task accuracies (lmms-eval's
``mlvu_aggregate_results_dev``). lmms-eval averages over its fixed task list and counts a task without questions
as 0; here the mean is over the tasks present in ``items``, so a subset gives the mean of what was run. The
report also gives the micro average over all questions (``overall``), which ``choice_bench.py`` prints as
"Avg".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from msjoe.data.benchmarks.base import (
    LoadResult,
    RowError,
    SkippedRow,
    VideoFinder,
    find_files,
    require,
    resolve_annotations,
    split_by_video,
)
from msjoe.data.schema import QAFormatError, QAItem
from msjoe.eval.scoring import (
    Extractor,
    MissingPolicy,
    ScoringPolicy,
    UnparsedPolicy,
    breakdown,
    build_report,
    category_values,
    mean_accuracy,
    score_items,
)
from msjoe.mllm.prompts import option_letters

NAME = "mlvu"
HF_DATASET_ID = "MLVU/MVLU"
HF_PATTERNS = ("*.json",)  # fnmatch's "*" crosses "/", so this also finds MLVU/json/*.json
# The multiple-choice tasks in the official order, as the JSON files' question_type names them.
TASKS = ("plotQA", "findNeedle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")
_TASK_FILE = re.compile(r"(\d+)_(\w+)\.json")


def load(annotations: str | Path, videos: str | Path | None) -> LoadResult:
    """MLVU dev questions from one task JSON file, a folder of them (``json/`` is searched for), or the Hub id
    ``MLVU/MVLU``; ``videos`` is MLVU's ``video/`` folder (``None``: do not check)."""
    path = resolve_annotations(annotations, hf_patterns=HF_PATTERNS)
    files = [path] if path.is_file() else _task_files(path)
    finder = VideoFinder(videos)
    skipped: list[SkippedRow] = []
    rows = []
    for file in files:
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            skipped.append(SkippedRow(file.name, f"invalid JSON at line {err.lineno}: {err.msg}"))
            continue
        if not isinstance(records, list):
            skipped.append(SkippedRow(file.name, f"expected a JSON list of questions, got {type(records).__name__}"))
            continue
        if records and not any(isinstance(r, dict) and "candidates" in r for r in records):
            skipped.append(
                SkippedRow(file.name, "no row has 'candidates': an open-ended generation task, not scored by M-Avg")
            )
            continue
        occurrences: dict[str, int] = {}
        for index, record in enumerate(records):
            try:
                if not isinstance(record, dict):
                    raise RowError(f"expected an object, got {type(record).__name__}")
                video_name = require(record, "video", str)
                number = occurrences.get(video_name, 0)
                occurrences[video_name] = number + 1
                rows.append(_item(record, file, number, finder))
            except (RowError, QAFormatError) as err:
                skipped.append(SkippedRow(f"{file.name}[{index}]", str(err)))
    return split_by_video(NAME, rows, skipped)


def _task_files(folder: Path) -> list[Path]:
    files = find_files(folder, ("*.json", "json/*.json", "**/json/*.json"), "MLVU task JSON file")
    numbered = [f for f in files if _TASK_FILE.fullmatch(f.name)]
    return numbered or files


def _item(record: dict[str, Any], file: Path, number: int, finder: VideoFinder) -> tuple[QAItem, bool]:
    video_name = require(record, "video", str)
    candidates = require(record, "candidates", list)
    if not all(isinstance(c, str) and c.strip() for c in candidates):
        raise RowError(f"field 'candidates' must be a list of non-empty strings, got {candidates!r}")
    answer_text = require(record, "answer", str)
    matches = [i for i, c in enumerate(candidates) if c == answer_text]
    if not matches:
        raise RowError(f"field 'answer' {answer_text!r} is not one of the candidates")
    answer = option_letters(len(candidates))[matches[-1]]  # choice_bench.py keeps the last equal candidate
    stem = file.stem
    match = _TASK_FILE.fullmatch(file.name)
    file_task = match.group(2) if match else stem
    task = record.get("question_type") if isinstance(record.get("question_type"), str) else file_task
    folders = dict.fromkeys([stem, task, file_task])  # video/1_plotQA/, video/plotQA/
    video, exists = finder.find([f"{folder}/{video_name}" for folder in folders] + [video_name])
    duration = record.get("duration")
    item = QAItem(
        id=f"{stem}/{Path(video_name).stem}_{number}",
        video=video,
        question=require(record, "question", str),
        options=tuple(c.strip() for c in candidates),
        answer=answer,
        duration=float(duration) if isinstance(duration, int | float) and not isinstance(duration, bool) else None,
        source=NAME,
        task=task,
        categories={"task": task},
        meta={"file": file.name, "video_name": video_name},
    )
    return item, exists


def score(
    items: Sequence[QAItem],
    predictions: Mapping[str, str],
    *,
    extractor: str | Extractor = "mlvu",
    unparsed: UnparsedPolicy = "wrong",
    missing_predictions: MissingPolicy = "error",
    seed: int = 0,
) -> dict[str, Any]:
    """MLVU per-task accuracy and M-Avg (the headline: the mean of per-task accuracies), plus the micro average.

    The default extraction is MLVU's own, made for its prompt ending in ``"Best option:("``; for prompts that
    ask for the letter (msjoe's), pass ``extractor="mlvu_lmms_eval"`` or ``"msjoe"``.
    """
    policy = ScoringPolicy(extractor, unparsed, missing_predictions, seed)
    scored, unknown = score_items(items, predictions, policy)
    by_task = breakdown(items, scored, category_values("task"), TASKS)
    report = build_report(
        NAME, items, scored, unknown, policy, {"task": by_task}, headline=("m_avg", mean_accuracy(by_task))
    )
    report["m_avg"] = report["headline"]["value"]
    return report
