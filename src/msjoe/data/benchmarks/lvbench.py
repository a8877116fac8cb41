"""LVBench: 103 videos of about an hour (4,101 s on average), 1,549 four-option questions.

Annotations: ``video_info.meta.jsonl`` of the Hugging Face dataset ``zai-org/LVBench`` (formerly
``THUDM/LVBench``), one video per line: ``key`` (the YouTube id, which names the video file), ``type`` (the video
genre), ``video_info`` (``duration_minutes``, among others) and ``qa``, a list of questions with ``uid``,
``question`` (the options inline on their own lines: ``"What ...?\\n(A) ...\\n(B) ...\\n(C) ...\\n(D) ..."``),
``answer`` (a letter), ``question_type`` (a list: a question can test several of the six abilities) and
``time_reference`` (``"mm:ss-mm:ss"``, the span holding the answer). Videos are ``<key>.mp4`` (LVBench's
``scripts/download.sh`` names them by key). Fields from THUDM/LVBench ``lvbench/metrics/compute_accuracy.py`` and
``README.md``, and third-party loaders of the same file; the field list of ``video_info`` beyond
``duration_minutes`` was not checked.

Scoring: a rule set of :mod:`msjoe.rules` (default ``lvbench``: ``polish_answer`` then THUDM/LVBench
``lvbench/metrics/compute_accuracy.py``: exact match with the stored ``answer``, a question counting in every
type it lists, questions without a reply skipped; also ``lvbench_exact``, ``lvbench_lmms_eval``, ``msjoe``).
Questions whose options cannot be split out of the text, or whose answer is not an option letter, cannot be
asked but are scored as the official script scores them (:class:`UnrunnableRow`). The report adds the
leaderboard's ``result.json`` keys (``scripts/test_acc.py``): ER, EU, KIR, TG, Rea, Sum, Overall.
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
    with_extensions,
)
from msjoe.data.schema import QAFormatError, QAItem
from msjoe.mllm.prompts import LETTERS
from msjoe.rules import RuleSet
from msjoe.rules.score import breakdown, category_values

NAME = "lvbench"
HF_DATASET_ID = "zai-org/LVBench"
HF_PATTERNS = ("video_info.meta.jsonl",)
ANNOTATION_FILE = "video_info.meta.jsonl"
# Question types and their leaderboard abbreviations (THUDM/LVBench scripts/test_acc.py).
LEADERBOARD_NAMES = {
    "entity recognition": "ER",
    "event understanding": "EU",
    "key information retrieval": "KIR",
    "temporal grounding": "TG",
    "reasoning": "Rea",
    "summarization": "Sum",
}


def load(annotations: str | Path, videos: str | Path | None) -> LoadResult:
    """LVBench questions from ``video_info.meta.jsonl``, a folder holding it (searched recursively), or the Hub
    id ``zai-org/LVBench``; ``videos`` is the folder of ``<key>.mp4`` files (``None``: do not check). A line that
    is not valid JSON, and each malformed question, is skipped with its reason."""
    path = resolve_annotations(annotations, hf_patterns=HF_PATTERNS)
    if path.is_dir():
        path = find_files(path, (ANNOTATION_FILE, f"**/{ANNOTATION_FILE}"), ANNOTATION_FILE)[0]
    finder = VideoFinder(videos)
    skipped: list[SkippedRow] = []
    unrunnable: list[UnrunnableRow] = []
    rows = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise RowError(f"expected an object, got {type(record).__name__}")
                key = str(require(record, "key", (str, int)))
                questions = require(record, "qa", list)
            except json.JSONDecodeError as err:
                skipped.append(SkippedRow(where, f"invalid JSON: {err.msg}"))
                continue
            except RowError as err:
                skipped.append(SkippedRow(where, str(err)))
                continue
            candidates = with_extensions(key)
            if isinstance(record.get("video_path"), str):  # copies that store the file name (e.g. lmms-lab)
                candidates.insert(0, record["video_path"])
            video, exists = finder.find(candidates)
            video_type = record.get("type") if isinstance(record.get("type"), str) and record.get("type") else None
            duration = _duration(record.get("video_info"))
            for index, qa in enumerate(questions):
                try:
                    if not isinstance(qa, dict):
                        raise RowError(f"expected an object, got {type(qa).__name__}")
                    item = _item(qa, key=key, video=video, video_type=video_type, duration=duration)
                except (RowError, QAFormatError) as err:
                    location = f"{where} qa[{index}]"
                    row = _unrunnable(qa, location, str(err), video_type)
                    if row is not None:
                        unrunnable.append(row)
                    note = "; still scored by compute_accuracy.py" if row is not None else ""
                    skipped.append(SkippedRow(location, f"{err}{note}"))
                    continue
                rows.append((item, exists))
    return split_by_video(NAME, rows, skipped, unrunnable)


def _unrunnable(qa: object, location: str, reason: str, video_type: str | None) -> UnrunnableRow | None:
    """The row as ``compute_accuracy.py`` scores it (it needs ``uid``, ``answer`` and ``question_type``), or
    ``None`` when the official script could not score it either."""
    if not isinstance(qa, dict) or not isinstance(qa.get("uid"), str | int) or isinstance(qa.get("uid"), bool):
        return None
    answer, types = qa.get("answer"), qa.get("question_type")
    if not isinstance(answer, str) or not answer or not isinstance(types, list) or not types:
        return None
    if not all(isinstance(t, str) and t for t in types):
        return None
    categories: dict[str, Any] = {"question_type": tuple(types)}
    if video_type:
        categories["video_type"] = video_type
    return UnrunnableRow(
        str(qa["uid"]), answer, categories=categories, meta={"answer_as_stored": answer}, location=location,
        reason=reason,
    )  # fmt: skip


def _duration(video_info: object) -> float | None:
    if isinstance(video_info, dict):
        minutes = video_info.get("duration_minutes")
        if isinstance(minutes, int | float) and not isinstance(minutes, bool) and minutes >= 0:
            return float(minutes) * 60.0
    return None


def split_inline_options(text: str) -> tuple[str, list[str]]:
    """``("question", ["opt A", "opt B", ...])`` from LVBench's ``"question\\n(A) opt A\\n(B) opt B..."``.

    Markers must run ``(A)``, ``(B)``, ... in order, each at the start of a line or after whitespace; the
    question is the text before ``(A)``. Raises ``ValueError`` if fewer than two options are found.
    """
    positions = []
    start = 0
    for letter in LETTERS:
        match = re.compile(rf"(?:^|(?<=\s))\({letter}\)\s*").search(text, start)
        if match is None:
            break
        positions.append(match)
        start = match.end()
    if len(positions) < 2:
        raise ValueError("the question text holds fewer than two inline options '(A) ...', '(B) ...'")
    stem = text[: positions[0].start()].strip()
    ends = [m.start() for m in positions[1:]] + [len(text)]
    options = [text[m.end() : end].strip() for m, end in zip(positions, ends, strict=True)]
    if not stem:
        raise ValueError("the question text is empty before '(A)'")
    for letter, option in zip(LETTERS, options, strict=False):
        if not option:
            raise ValueError(f"option ({letter}) is empty")
    return stem, options


def parse_time_reference(text: str) -> tuple[float, float] | None:
    """``(start, end)`` seconds from ``"mm:ss-mm:ss"`` (``h:mm:ss`` also read); ``None`` if unreadable."""
    parts = text.split("-")
    if len(parts) != 2:
        return None
    seconds = []
    for part in parts:
        fields = part.strip().split(":")
        if not 2 <= len(fields) <= 3 or not all(f.strip().isdigit() for f in fields):
            return None
        value = 0
        for f in fields:
            value = value * 60 + int(f)
        seconds.append(float(value))
    return (seconds[0], seconds[1]) if seconds[0] <= seconds[1] else None


def _item(qa: dict[str, Any], *, key: str, video: str, video_type: str | None, duration: float | None) -> QAItem:
    uid = str(require(qa, "uid", (str, int)))
    try:
        question, options = split_inline_options(require(qa, "question", str))
    except ValueError as err:
        raise RowError(f"field 'question': {err}") from None
    types = require(qa, "question_type", (list, str))
    types = [types] if isinstance(types, str) else types
    if not types or not all(isinstance(t, str) and t.strip() for t in types):
        raise RowError(f"field 'question_type' must be a non-empty list of strings, got {types!r}")
    categories: dict[str, Any] = {"question_type": [t.strip() for t in types]}
    if video_type:
        categories["video_type"] = video_type
    answer = require(qa, "answer", str)
    meta: dict[str, Any] = {"key": key, "answer_as_stored": answer}  # compared as stored: "A " never matches
    evidence = []
    reference = qa.get("time_reference")
    if isinstance(reference, str) and reference.strip():
        meta["time_reference"] = reference
        span = parse_time_reference(reference)
        if span is not None:  # an unreadable span is kept in meta only: it is a hint, not needed to score
            evidence.append(span)
    return QAItem(
        id=uid,
        video=video,
        question=question,
        options=tuple(options),
        answer=answer.strip(),
        duration=duration,
        source=NAME,
        task=categories["question_type"][0],
        categories=categories,
        evidence=tuple(evidence),
        meta=meta,
    )


def score(
    items: Sequence[QAItem],
    predictions: Mapping[str, str],
    *,
    rules: str | RuleSet | None = None,
    seed: int | None = None,
    unrunnable: Sequence[UnrunnableRow] = (),
) -> dict[str, Any]:
    """LVBench accuracy overall and per ``question_type`` (a question counts in each type it lists; with the
    official rule set, twice in a type it lists twice), plus ``report["leaderboard"]``, the leaderboard's
    ``result.json`` (abbreviated type names and Overall). ``unrunnable``: :attr:`LoadResult.unrunnable`."""

    def tables(questions, scored, rule_set):
        def table(name, order=()):
            return breakdown(questions, scored, category_values(name), order, repeated_groups=rule_set.repeated_groups)

        return {
            "question_type": table("question_type", tuple(LEADERBOARD_NAMES)),
            "video_type": table("video_type"),
        }, None

    report = score_with_rules(NAME, items, predictions, rules, seed, unrunnable, tables)
    by_type = report["breakdowns"]["question_type"]
    leaderboard = {LEADERBOARD_NAMES.get(name, name): t["accuracy"] for name, t in by_type.items()}
    leaderboard["Overall"] = report["overall"]["accuracy"]
    report["leaderboard"] = leaderboard
    return report
