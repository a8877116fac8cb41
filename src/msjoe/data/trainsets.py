"""Training sets with multiple-choice questions about videos, read into :class:`~msjoe.data.schema.QAItem` s.

NExT-QA (doc-doc/NExT-QA, ``dataset/nextqa/{train,val,test}.csv``): one question a row with the columns
``video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4``; ``video`` is the VidOR video id,
``answer`` the 0-based index of the correct ``a<i>``, ``qid`` numbers the video's questions and ``type`` is the
question type (``CW``/``CH`` causal, ``TN``/``TC``/``TP`` temporal, ``DL``/``DC``/``DO`` descriptive). Videos
are ``NExTVideo/<folder>/<video>.mp4``, the folder given by ``map_vid_vidorID.json`` (``{"<video>":
"<folder>/<video>"}``, read from beside the CSV when there); without the map, ``<video>.mp4`` is looked for. Item
ids are ``<video>_<qid>``, the form NExT-QA's own code uses. The CSV gives frames but no frame rate, so durations
come from probing the videos (``msjoe data import`` does unless ``--no-probe``).

Perception Test (google-deepmind/perception_test, ``mc_question_{train,valid}.json`` or ``all_{split}.json``):
a JSON object keyed by video id; each video has ``metadata`` (``video_id``, ``frame_rate``, ``num_frames``,
``split``, ...) and ``mc_question``, a list of ``{"id", "question", "options" (3 texts), "answer_id" (0-based),
"area", "reasoning", "tag" (a list)}`` (the README's field tables). Videos are ``<video_id>.mp4``. Item ids are
``<video_id>-<id>``; the duration is ``num_frames / frame_rate``. Test-split rows without an ``answer_id`` (or
with ``-1``) get ``answer=None``.

LLaVA-Video-178K (lmms-lab/LLaVA-Video-178K, ``<subset>/*_mc_*qa_processed.json``) and other sets in LLaVA's
conversation layout: a JSON list of ``{"id", "video" (relative path), "conversations": [{"from": "human", "value":
"<image>\nQuestion?\nA. ...\nB. ...\nAnswer with the option's letter from the given choices directly."},
{"from": "gpt", "value": "B."}, ...], "data_source"}``. Every human/gpt pair is one question (item id
``<id>-<pair>``): the media tag and trailing instruction lines are removed, the lettered lines (``A. x``, ``(A) x``,
``A) x``) are the options, the text before them the question, and the gpt turn's leading letter the answer. Pairs
without lettered options (the open-ended files) are rejected with that reason. Videos are looked for at ``video``
under the video root, then by file name; durations come from probing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from msjoe.checks import is_int
from msjoe.data.benchmarks.base import LoadResult, RowError, SkippedRow, VideoFinder, require, split_by_video
from msjoe.data.records import FileFormatError, Record, read_records
from msjoe.data.schema import QAFormatError, QAItem
from msjoe.mllm.prompts import option_letters

NEXTQA = "nextqa"
PERCEPTIONTEST = "perceptiontest"
LLAVA_VIDEO = "llava_video"
NEXTQA_MAP_FILE = "map_vid_vidorID.json"
NEXTQA_TYPE_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
NEXTQA_OPTIONS = 5

Rows = list[tuple[QAItem, bool]]


def load_nextqa(
    annotations: str | Path, videos: str | Path | None, *, video_map: str | Path | None = None
) -> tuple[LoadResult, dict[str, str]]:
    """NExT-QA questions from one of its CSV files; ``videos`` is the ``NExTVideo`` folder. Returns the result and
    each item's row location (``file.csv:line``)."""
    path = Path(annotations)
    if path.is_dir():
        raise FileFormatError(f"{path} is a folder: pass one NExT-QA CSV (train.csv, val.csv or test.csv)")
    folders = _nextqa_map(path, video_map)
    finder = VideoFinder(videos)
    rows: Rows = []
    skipped: list[SkippedRow] = []
    locations: dict[str, str] = {}
    for record in read_records(path):
        try:
            item, exists = _nextqa_item(record, finder, folders, split=path.stem)
        except (RowError, QAFormatError) as err:
            skipped.append(SkippedRow(record.location, str(err)))
            continue
        locations.setdefault(item.id, record.location)
        rows.append((item, exists))
    return split_by_video(NEXTQA, rows, skipped), locations


def _nextqa_map(csv_path: Path, video_map: str | Path | None) -> dict[str, str]:
    map_path = Path(video_map) if video_map is not None else csv_path.with_name(NEXTQA_MAP_FILE)
    if not map_path.is_file():
        if video_map is not None:
            raise FileNotFoundError(f"NExT-QA video map not found: {map_path}")
        return {}
    try:
        mapping = json.loads(map_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{map_path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise FileFormatError(f'{map_path}: expected an object {{"<video>": "<folder>/<video>"}}')
    return mapping


def _int_cell(record: dict[str, Any], name: str) -> int:
    value = require(record, name, (str, int))
    try:
        return int(value)
    except ValueError:
        raise RowError(f"field {name!r} must be an integer, got {value!r}") from None


def _nextqa_item(record: Record, finder: VideoFinder, folders: dict[str, str], *, split: str) -> tuple[QAItem, bool]:
    row = record.value
    video_id = str(require(row, "video", (str, int))).strip()
    qid = str(require(row, "qid", (str, int))).strip()
    options = [str(require(row, f"a{i}", (str, int))).strip() for i in range(NEXTQA_OPTIONS)]
    answer = _int_cell(row, "answer")
    if not 0 <= answer < NEXTQA_OPTIONS:
        raise RowError(f"field 'answer' must be an option index 0..{NEXTQA_OPTIONS - 1}, got {answer}")
    question_type = str(require(row, "type", str)).strip()
    candidates = [f"{folders[video_id]}.mp4"] if video_id in folders else []
    candidates += [f"NExTVideo/{folders[video_id]}.mp4"] if video_id in folders else []
    candidates.append(f"{video_id}.mp4")
    video, exists = finder.find(candidates)
    categories = {"type": question_type}
    if question_type[:1] in NEXTQA_TYPE_GROUPS:
        categories["type_group"] = NEXTQA_TYPE_GROUPS[question_type[0]]
    meta: dict[str, Any] = {"video_id": video_id, "qid": qid, "split": split}
    for name in ("frame_count", "width", "height"):
        if str(row.get(name) or "").strip().isdigit():
            meta[name] = int(row[name])
    item = QAItem(
        id=f"{video_id}_{qid}",
        video=video,
        question=str(require(row, "question", str)).strip(),
        options=tuple(options),
        answer=option_letters(NEXTQA_OPTIONS)[answer],
        source=NEXTQA,
        task=question_type,
        categories=categories,
        meta=meta,
    )
    return item, exists


def load_perceptiontest(annotations: str | Path, videos: str | Path | None) -> tuple[LoadResult, dict[str, str]]:
    """Perception Test multiple-choice questions from its JSON annotations; ``videos`` is the folder of
    ``<video_id>.mp4`` files. Returns the result and each item's location (``file.json:line mc_question[i]``)."""
    path = Path(annotations)
    finder = VideoFinder(videos)
    rows: Rows = []
    skipped: list[SkippedRow] = []
    locations: dict[str, str] = {}
    for record in read_records(path):
        entry = record.value
        if not isinstance(entry, dict):
            what = type(entry).__name__
            skipped.append(SkippedRow(record.location, f"expected a video entry (an object), got {what}"))
            continue
        metadata = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
        video_id = metadata.get("video_id") or record.key
        if not isinstance(video_id, str) or not video_id:
            skipped.append(SkippedRow(record.location, "no video id: neither metadata.video_id nor an object key"))
            continue
        questions = entry.get("mc_question")
        if questions is None:
            continue  # a video annotated for other tasks only
        if not isinstance(questions, list):
            skipped.append(SkippedRow(record.location, "field 'mc_question' must be a list"))
            continue
        video, exists = finder.find([f"{video_id}.mp4", f"videos/{video_id}.mp4", f"{video_id}.MP4"])
        duration = _perception_duration(metadata)
        for index, question in enumerate(questions):
            location = f"{record.location} mc_question[{index}]"
            try:
                if not isinstance(question, dict):
                    raise RowError(f"expected an object, got {type(question).__name__}")
                item = _perception_item(question, video_id, video, duration, metadata)
            except (RowError, QAFormatError) as err:
                skipped.append(SkippedRow(location, str(err)))
                continue
            locations.setdefault(item.id, location)
            rows.append((item, exists))
    return split_by_video(PERCEPTIONTEST, rows, skipped), locations


def _perception_duration(metadata: dict[str, Any]) -> float | None:
    frames, rate = metadata.get("num_frames"), metadata.get("frame_rate")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (frames, rate))
    return float(frames) / float(rate) if numbers and rate > 0 and frames >= 0 else None


def _perception_item(
    question: dict[str, Any], video_id: str, video: str, duration: float | None, metadata: dict[str, Any]
) -> QAItem:
    question_id = str(require(question, "id", (int, str)))
    options = require(question, "options", list)
    if not all(isinstance(o, str) for o in options):
        raise RowError(f"field 'options' must be a list of strings, got {options!r}")
    answer_id = question.get("answer_id")
    answer = None
    if answer_id is not None and answer_id != -1:
        if not is_int(answer_id) or not 0 <= answer_id < len(options):
            raise RowError(f"field 'answer_id' must be an option index 0..{len(options) - 1}, got {answer_id!r}")
        answer = option_letters(len(options))[answer_id]
    categories: dict[str, Any] = {}
    for name in ("area", "reasoning"):
        if isinstance(question.get(name), str) and question[name].strip():
            categories[name] = question[name].strip()
    tags = question.get("tag")
    if isinstance(tags, list) and tags and all(isinstance(t, str) and t.strip() for t in tags):
        categories["tag"] = [t.strip() for t in tags]
    meta = {"video_id": video_id, "question_id": question_id}
    if isinstance(metadata.get("split"), str):
        meta["split"] = metadata["split"]
    return QAItem(
        id=f"{video_id}-{question_id}",
        video=video,
        question=str(require(question, "question", str)).strip(),
        options=tuple(o.strip() for o in options),
        answer=answer,
        duration=duration,
        source=PERCEPTIONTEST,
        task=categories.get("area"),
        categories=categories,
        meta=meta,
    )


_MEDIA_TAG = re.compile(r"<(?:image|video)>")
_OPTION_LINE = re.compile(r"\(?([A-Z])[.)]\)?\s+(\S.*)")
_OPTIONS_LABEL = re.compile(r"(?:options|choices)\s*:?", re.IGNORECASE)
_INSTRUCTION = re.compile(
    r"(?:answer with|please (?:answer|respond|select|choose|provide|give)|respond with|select the|choose the)",
    re.IGNORECASE,
)
_ANSWER_LETTER = re.compile(r"\(?([A-Z])(?:\)|[.:,]|\s|$)")


def load_llava_video(annotations: str | Path, videos: str | Path | None) -> tuple[LoadResult, dict[str, str]]:
    """Multiple-choice questions from a LLaVA conversation JSON (see the module note); ``videos`` is the folder the
    entries' ``video`` paths are relative to. Returns the result and each item's location
    (``file.json:line conversations[i]``)."""
    path = Path(annotations)
    finder = VideoFinder(videos)
    rows: Rows = []
    skipped: list[SkippedRow] = []
    locations: dict[str, str] = {}
    for number, record in enumerate(read_records(path)):
        entry = record.value
        if not isinstance(entry, dict):
            what = type(entry).__name__
            skipped.append(SkippedRow(record.location, f"expected a conversation entry (an object), got {what}"))
            continue
        video_path = entry.get("video")
        turns = entry.get("conversations")
        if not isinstance(video_path, str) or not video_path.strip():
            skipped.append(SkippedRow(record.location, "field 'video' must be a non-empty path"))
            continue
        if not isinstance(turns, list):
            skipped.append(SkippedRow(record.location, "field 'conversations' must be a list of turns"))
            continue
        entry_id = str(entry.get("id") or f"{path.stem}-{number}")
        video, exists = finder.find([video_path, Path(video_path).name])
        subset = entry.get("data_source") if isinstance(entry.get("data_source"), str) else None
        for pair in range(len(turns) // 2):
            location = f"{record.location} conversations[{2 * pair}]"
            try:
                question, options, answer = _llava_pair(turns[2 * pair], turns[2 * pair + 1])
                item = QAItem(
                    id=f"{entry_id}-{pair}",
                    video=video,
                    question=question,
                    options=options,
                    answer=answer,
                    source=LLAVA_VIDEO,
                    categories={"subset": subset} if subset else {},
                    meta={"conversation": entry_id, "pair": pair, "video_path": video_path},
                )
            except (RowError, QAFormatError) as err:
                skipped.append(SkippedRow(location, str(err)))
                continue
            locations.setdefault(item.id, location)
            rows.append((item, exists))
    return split_by_video(LLAVA_VIDEO, rows, skipped), locations


def _llava_pair(human: Any, gpt: Any) -> tuple[str, tuple[str, ...], str]:
    """(question, options, answer letter) of one human/gpt pair; ``RowError`` says why a pair is not one."""
    for turn, speaker in ((human, "human"), (gpt, "gpt")):
        if not isinstance(turn, dict) or turn.get("from") != speaker or not isinstance(turn.get("value"), str):
            raise RowError(f"expected a {speaker!r} turn with a text 'value', got {str(turn)[:80]!r}")
    lines = [line.strip() for line in _MEDIA_TAG.sub("", human["value"]).splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if _OPTION_LINE.fullmatch(line)), None)
    if first is None:
        raise RowError("open-ended question: no lettered option lines (A. ..., B. ...)")
    options: list[str] = []
    for line in lines[first:]:
        match = _OPTION_LINE.fullmatch(line)
        if match is None or match.group(1) != option_letters(len(options) + 1)[-1]:
            break
        options.append(match.group(2).strip())
    rest = lines[first + len(options) :]
    if any(not _INSTRUCTION.match(line) for line in rest):
        raise RowError(f"text after the options is neither an option nor an instruction: {rest[0][:80]!r}")
    question_lines = [line for line in lines[:first] if not _OPTIONS_LABEL.fullmatch(line)]
    question = " ".join(line for line in question_lines if not _INSTRUCTION.match(line))
    if len(options) < 2 or not question:
        raise RowError(f"a question and at least two lettered options are needed, got {len(options)} option(s)")
    match = _ANSWER_LETTER.match(gpt["value"].strip())
    letters = option_letters(len(options))
    if match is None or match.group(1) not in letters:
        span = f"{letters[0]}-{letters[-1]}"
        raise RowError(f"the answer {gpt['value'][:40]!r} does not start with one of the letters {span}")
    return question, tuple(options), match.group(1)
