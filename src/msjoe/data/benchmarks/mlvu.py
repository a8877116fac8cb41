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

Scoring: a rule set of :mod:`msjoe.rules` (default ``mlvu``: MLVU's
``evaluation/multiple_choice_evaluation/choice_bench.py``; also ``mlvu_videochat2``, ``mlvu_lmms_eval``,
``mlvu_lmms_eval_legacy``, ``msjoe``): accuracy per task, headline M-Avg = the unweighted mean of the per-task
accuracies (``choice_bench.py``'s "Avg", a macro mean over the tasks that have questions; lmms-eval divides by
its 7 tasks instead). The report also gives the micro average over all questions (``overall``). Rows
``choice_bench.py`` scores but msjoe cannot ask (an empty candidate, an answer that is not a candidate: 6 of the
2,175 dev rows) are :class:`UnrunnableRow` s.
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
    UnrunnableRow,
    VideoFinder,
    find_files,
    require,
    resolve_annotations,
    score_with_rules,
    split_by_video,
)
from msjoe.data.schema import QAFormatError, QAItem
from msjoe.mllm.prompts import option_letters
from msjoe.rules import RuleSet
from msjoe.rules.score import breakdown, category_values, mean_accuracy

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
    unrunnable: list[UnrunnableRow] = []
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
                location = f"{file.name}[{index}]"
                row = _unrunnable(record, file, occurrences, location, str(err))
                if row is not None:
                    unrunnable.append(row)
                note = "; still scored by choice_bench.py" if row is not None else ""
                skipped.append(SkippedRow(location, f"{err}{note}"))
    return split_by_video(NAME, rows, skipped, unrunnable)


def _unrunnable(
    record: object, file: Path, occurrences: dict[str, int], location: str, reason: str
) -> UnrunnableRow | None:
    """The row as ``choice_bench.py`` scores it: it needs a video, a candidate list and an answer; the letter is
    that of the last candidate equal to the answer, ``"@"`` when there is none (``chr(ord("A") - 1)``)."""
    if not isinstance(record, dict) or record.get("video") not in occurrences:
        return None
    candidates, answer = record.get("candidates"), record.get("answer")
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        return None
    if not isinstance(answer, str):
        return None
    matches = [i for i, c in enumerate(candidates) if c == answer]
    letter = chr(ord("A") + matches[-1]) if matches else "@"
    task = _task_of(record, file)
    video_name = record["video"]
    return UnrunnableRow(
        _item_id(file, video_name, occurrences[video_name] - 1), letter, options=tuple(candidates),
        categories={"task": task}, meta={"file": file.name, "video_name": video_name}, location=location,
        reason=reason,
    )  # fmt: skip


def _task_of(record: dict[str, Any], file: Path) -> str:
    match = _TASK_FILE.fullmatch(file.name)
    file_task = match.group(2) if match else file.stem
    return record.get("question_type") if isinstance(record.get("question_type"), str) else file_task


def _item_id(file: Path, video_name: str, number: int) -> str:
    return f"{file.stem}/{Path(video_name).stem}_{number}"


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
    task = _task_of(record, file)
    folders = dict.fromkeys([stem, task, file_task])  # video/1_plotQA/, video/plotQA/
    video, exists = finder.find([f"{folder}/{video_name}" for folder in folders] + [video_name])
    duration = record.get("duration")
    item = QAItem(
        id=_item_id(file, video_name, number),
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
    rules: str | RuleSet | None = None,
    seed: int | None = None,
    unrunnable: Sequence[UnrunnableRow] = (),
) -> dict[str, Any]:
    """MLVU per-task accuracy and M-Avg (the headline: the mean of per-task accuracies), plus the micro average.

    The default rule set is MLVU's own, made for its prompt ending in ``"Best option: ("``; msjoe's prompt asks
    for the letter, so ``rules="msjoe"`` or ``"mlvu_lmms_eval"`` read more of its replies.
    ``unrunnable``: :attr:`LoadResult.unrunnable` (scored by the official rule sets).
    """

    def tables(questions, scored, rule_set):
        by_task = breakdown(questions, scored, category_values("task"), TASKS)
        return {"task": by_task}, ("m_avg", mean_accuracy(by_task, rule_set.mean_over))

    report = score_with_rules(NAME, items, predictions, rules, seed, unrunnable, tables)
    report["m_avg"] = report["headline"]["value"]
    return report
