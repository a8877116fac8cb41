"""``msjoe data import``: annotation files of many layouts in, msjoe's QA JSONL (:mod:`msjoe.data.schema`) out.

Formats (:data:`IMPORT_FORMATS`):

* the four benchmarks (``videomme``, ``longvideobench``, ``lvbench``, ``mlvu``), read by their loaders in
  :mod:`msjoe.data.benchmarks`;
* training sets: ``nextqa`` (NExT-QA's CSV) and ``perceptiontest`` (Perception Test's JSON), see
  :mod:`msjoe.data.trainsets`;
* ``generic``: any JSON / JSONL / CSV / parquet file of one question a row, read through a :class:`FieldMap`
  given on the command line (``--map question=q --map options=a0,a1,a2 --map answer=label``).

Videos are resolved against a root folder (default: the annotation file's folder). Questions whose video is
absent are listed (:attr:`LoadResult.missing_videos`), never an error; every rejected row is listed with its
place (``file:line``, or ``file[index]`` for the benchmark loaders) and the reason. Durations the annotations do
not give are read from the videos' headers (``probe_durations``).

>>> result = import_annotations("nextqa", "nextqa/train.csv", video_root="NExTVideo")
>>> write_import(result, "data/nextqa_train.jsonl")   # + data/nextqa_train.import.json: missing videos, rejects
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from msjoe.atomic import write_text_atomically
from msjoe.checks import is_number
from msjoe.data.benchmarks import available_benchmarks, get_benchmark
from msjoe.data.benchmarks.base import (
    LoadResult,
    RowError,
    SkippedRow,
    VideoFinder,
    split_by_video,
    with_extensions,
)
from msjoe.data.records import FileFormatError, Record, read_records
from msjoe.data.schema import QAFormatError, QAItem, write_qa_jsonl
from msjoe.data.trainsets import (
    LLAVA_VIDEO,
    NEXTQA,
    PERCEPTIONTEST,
    load_llava_video,
    load_nextqa,
    load_perceptiontest,
)
from msjoe.errors import VideoError
from msjoe.mllm.prompts import normalize_options, option_letters

__all__ = [
    "ANSWER_FORMATS",
    "GENERIC",
    "IMPORT_FORMATS",
    "FieldMap",
    "FileFormatError",
    "import_annotations",
    "load_generic",
    "probe_durations",
    "report_path",
    "write_import",
]

GENERIC = "generic"
AnswerFormat = Literal["letter", "index", "index1", "text"]
ANSWER_FORMATS: tuple[str, ...] = ("letter", "index", "index1", "text")
IMPORT_FORMATS: dict[str, str] = {
    **{name: f"benchmark: {get_benchmark(name).description}" for name in available_benchmarks()},
    NEXTQA: "NExT-QA CSV (video, question, answer, qid, type, a0..a4) + map_vid_vidorID.json",
    PERCEPTIONTEST: "Perception Test JSON (per video: metadata, mc_question list)",
    LLAVA_VIDEO: "LLaVA conversation JSON (LLaVA-Video-178K's *_mc_*qa_processed.json): one question per turn pair",
    GENERIC: "any JSON / JSONL / CSV / parquet with a field map (--map NAME=FIELD)",
}
"""Format name -> one line for listings."""

_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")


# --------------------------------------------------------------------------------------------------------------
# The generic field map
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldMap:
    """Where each QA field is in a row of a generic annotation file. A field name may be a dotted path into nested
    objects (``video.path``); a key that contains the dot itself wins.

    Attributes:
        question: the question text.
        options: one field holding a list of option texts (a JSON list in a CSV cell works too; ``"A. ..."`` labels
            are removed), or several fields holding one option each (``a0,a1,a2,a3``; empty ones are dropped, so
            rows may have fewer options).
        answer: the correct option, read as ``answer_format`` says.
        answer_format: ``letter`` (``B``, ``b``, ``(B)``, ``B.``), ``index`` (0-based), ``index1`` (1-based) or
            ``text`` (equal to exactly one option's text).
        video: the video file, relative to the video root; a name without a suffix is looked for with the usual
            video suffixes (``.mp4``, ``.mkv``, ...).
        id: the question id; ``None`` numbers rows ``<file stem>-<row number>``.
        duration: the video length in seconds (optional; else read from the video's header).
        task: the question type (optional).
        categories: breakdown name -> field (optional).
        evidence: a field holding evidence spans, a list of ``[start, end]`` pairs in seconds (optional).
        evidence_start, evidence_end: fields of one evidence span in seconds (optional, both or neither).
        meta: other fields copied into ``meta`` (optional).
    """

    question: str = "question"
    options: tuple[str, ...] = ("options",)
    answer: str = "answer"
    answer_format: AnswerFormat = "letter"
    video: str = "video"
    id: str | None = None
    duration: str | None = None
    task: str | None = None
    categories: Mapping[str, str] = field(default_factory=dict)
    evidence: str | None = None
    evidence_start: str | None = None
    evidence_end: str | None = None
    meta: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {self.answer_format!r}")
        if (self.evidence_start is None) != (self.evidence_end is None):
            raise ValueError("evidence_start and evidence_end go together: give both fields or neither")
        if not self.options:
            raise ValueError("options must name at least one field")

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FieldMap:
        """A map from ``NAME=FIELD`` strings: ``question``, ``options`` (comma-separated fields), ``answer``,
        ``answer_format`` (its value is a format, not a field), ``video``, ``id``, ``duration``, ``task``,
        ``evidence``, ``evidence_start``, ``evidence_end``, ``meta`` (comma-separated) and ``category.NAME``.
        Names not given keep their defaults. Raises ``ValueError`` naming a malformed or unknown entry."""
        values: dict[str, Any] = {}
        categories: dict[str, str] = {}
        singles = {
            "question",
            "answer",
            "answer_format",
            "video",
            "id",
            "duration",
            "task",
            "evidence",
            "evidence_start",
            "evidence_end",
        }
        for spec in specs:
            name, sep, target = (part.strip() for part in spec.partition("="))
            if not sep or not name or not target:
                raise ValueError(f"field map entry {spec!r} must look like NAME=FIELD (e.g. question=q)")
            if name.startswith("category."):
                categories[name.removeprefix("category.")] = target
            elif name in ("options", "meta"):
                fields = tuple(part.strip() for part in target.split(","))
                if not all(fields):
                    raise ValueError(f"field map entry {spec!r}: empty field name in the comma-separated list")
                values[name] = fields
            elif name in singles:
                values[name] = target
            else:
                known = ", ".join(sorted([*singles, "options", "meta", "category.NAME"]))
                raise ValueError(f"field map entry {spec!r}: unknown name {name!r}; known: {known}")
        if categories:
            values["categories"] = categories
        return cls(**values)


_MISSING = object()


def _lookup(row: Any, path: str) -> Any:
    """``row[path]``, else the dotted path into nested objects; :data:`_MISSING` when absent."""
    if isinstance(row, Mapping) and path in row:
        return row[path]
    value = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _present(row: Any, path: str, what: str) -> Any:
    value = _lookup(row, path)
    if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"{what} field {path!r} is missing or empty")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RowError(f"field {path!r} must be a number, got {value!r}") from None
    if not is_number(value):
        raise RowError(f"field {path!r} must be a number, got {value!r}")
    return float(value)


def _options(row: Any, fields: FieldMap) -> list[str]:
    if len(fields.options) == 1:
        value = _present(row, fields.options[0], "options")
        if isinstance(value, str):  # a JSON list in a CSV cell
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise RowError(
                    f"field {fields.options[0]!r} must be a list of options (or a JSON list), got {value[:80]!r}"
                ) from None
        if not isinstance(value, list | tuple):
            raise RowError(f"field {fields.options[0]!r} must be a list of options, got {type(value).__name__}")
        texts = list(value)
    else:
        texts = []
        for name in fields.options:
            value = _lookup(row, name)
            if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
                continue
            texts.append(value)
    if not all(isinstance(text, str | int | float) and not isinstance(text, bool) for text in texts):
        raise RowError(f"options must be texts, got {texts!r}")
    try:
        return normalize_options([str(text).strip() for text in texts])
    except ValueError as err:
        raise RowError(f"options: {err}") from None


def _answer_letter(value: Any, options: Sequence[str], fields: FieldMap) -> str:
    letters = option_letters(len(options))
    path = fields.answer
    if fields.answer_format == "text":
        matches = [i for i, option in enumerate(options) if option == str(value).strip()]
        if len(matches) != 1:
            problem = "is not among the options" if not matches else "matches several options"
            raise RowError(f"answer {str(value)!r} (field {path!r}) {problem}")
        return letters[matches[0]]
    if fields.answer_format == "letter":
        match = _LETTER.fullmatch(str(value).strip())
        letter = match.group(1).upper() if match else None
        if letter not in letters:
            raise RowError(f"answer {value!r} (field {path!r}) is not one of the option letters {', '.join(letters)}")
        return letter
    try:
        index = int(str(value).strip())
    except ValueError:
        raise RowError(f"answer {value!r} (field {path!r}) must be an integer option index") from None
    index -= fields.answer_format == "index1"
    if not 0 <= index < len(options):
        first = 1 if fields.answer_format == "index1" else 0
        raise RowError(f"answer {value!r} (field {path!r}) is not an option index {first}..{len(options) - 1 + first}")
    return letters[index]


def _generic_item(
    record: Record, number: int, fields: FieldMap, finder: VideoFinder, source: str, stem: str
) -> tuple[QAItem, bool]:
    row = record.value
    if isinstance(row, json.JSONDecodeError):
        raise RowError(f"invalid JSON: {row.msg} (column {row.colno})")
    if not isinstance(row, Mapping):
        raise RowError(f"expected an object, got {type(row).__name__}")
    options = _options(row, fields)
    answer = _answer_letter(_present(row, fields.answer, "answer"), options, fields)
    video_name = str(_present(row, fields.video, "video")).strip()
    candidates = [video_name] if Path(video_name).suffix else [video_name, *with_extensions(video_name)]
    video, exists = finder.find(candidates)
    item_id = str(_present(row, fields.id, "id")).strip() if fields.id else (record.key or f"{stem}-{number}")
    duration = None
    if fields.duration and _lookup(row, fields.duration) not in (_MISSING, None, ""):
        duration = _number(_lookup(row, fields.duration), fields.duration)
    evidence: tuple[tuple[float, float], ...] = ()
    if fields.evidence and _lookup(row, fields.evidence) not in (_MISSING, None, ""):
        spans = _lookup(row, fields.evidence)
        if isinstance(spans, str):
            try:
                spans = json.loads(spans)
            except json.JSONDecodeError:
                raise RowError(f"field {fields.evidence!r} must be a list of [start, end] spans") from None
        if not isinstance(spans, list | tuple) or not all(isinstance(s, list | tuple) and len(s) == 2 for s in spans):
            raise RowError(f"field {fields.evidence!r} must be a list of [start, end] spans, got {spans!r}")
        evidence = tuple((_number(a, fields.evidence), _number(b, fields.evidence)) for a, b in spans)
    if fields.evidence_start and fields.evidence_end:
        start, end = (_lookup(row, name) for name in (fields.evidence_start, fields.evidence_end))
        if start not in (_MISSING, None, "") and end not in (_MISSING, None, ""):
            evidence += ((_number(start, fields.evidence_start), _number(end, fields.evidence_end)),)
    categories = {}
    for name, path in fields.categories.items():
        value = _lookup(row, path)
        if value not in (_MISSING, None, "", []):
            categories[name] = value if isinstance(value, list) else str(value)
    task = _lookup(row, fields.task) if fields.task else None
    meta = {path: value for path in fields.meta if (value := _lookup(row, path)) is not _MISSING}
    item = QAItem(
        id=item_id,
        video=video,
        question=str(_present(row, fields.question, "question")).strip(),
        options=tuple(options),
        answer=answer,
        duration=duration,
        source=source,
        task=None if task in (_MISSING, None, "") else str(task),
        categories=categories,
        evidence=evidence,
        meta=meta,
    )
    return item, exists


def load_generic(
    annotations: str | Path, videos: str | Path | None, *, fields: FieldMap, source: str | None = None
) -> tuple[LoadResult, dict[str, str]]:
    """Questions from a JSON / JSONL / CSV / parquet file read through ``fields``; returns the result and each
    item's row location. ``source`` defaults to the file's stem."""
    path = Path(annotations)
    source = source or path.stem
    finder = VideoFinder(videos)
    rows = []
    skipped: list[SkippedRow] = []
    locations: dict[str, str] = {}
    for number, record in enumerate(read_records(path), start=1):
        try:
            item, exists = _generic_item(record, number, fields, finder, source, path.stem)
        except (RowError, QAFormatError) as err:
            skipped.append(SkippedRow(record.location, str(err)))
            continue
        locations.setdefault(item.id, record.location)
        rows.append((item, exists))
    return split_by_video(source, rows, skipped), locations


# --------------------------------------------------------------------------------------------------------------
# Importing
# --------------------------------------------------------------------------------------------------------------
def import_annotations(
    format: str,
    annotations: str | Path,
    *,
    video_root: str | Path | None = None,
    fields: FieldMap | None = None,
    source: str | None = None,
    video_map: str | Path | None = None,
    probe: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Read ``annotations`` in ``format`` (see :data:`IMPORT_FORMATS`) into QA items.

    Args:
        format: a benchmark name, ``nextqa``, ``perceptiontest`` or ``generic``.
        annotations: the annotation file (a benchmark also takes its folder or Hub dataset id).
        video_root: the folder videos are resolved against; ``None``: the annotation file's folder (for a Hub id,
            videos are not checked).
        fields: the field map of ``generic`` (required there, refused elsewhere).
        source: the ``source`` of generic items (default: the file's stem).
        video_map: NExT-QA's ``map_vid_vidorID.json`` when it is not beside the CSV.
        probe: read the duration of items that have none from their video's header (each video once); a video
            that cannot be read rejects its questions, with the reason.
        progress: called ``(done, total)`` while probing.

    Returns:
        A :class:`LoadResult`: ``items`` (video found), ``missing`` (video not found) and ``skipped`` (rejected
        rows: where and why).
    """
    if format not in IMPORT_FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of: {', '.join(IMPORT_FORMATS)}")
    if (fields is not None) != (format == GENERIC):
        raise ValueError("a field map (--map) is given with the generic format only, and it needs one")
    if video_map is not None and format != NEXTQA:
        raise ValueError("a video map is only read with the nextqa format")
    local = Path(annotations).expanduser()
    if video_root is None and local.exists():
        video_root = local if local.is_dir() else local.parent
    if video_root is not None:  # absolute: the written JSONL resolves relative paths against its own folder
        video_root = Path(video_root).expanduser().resolve()
    if format == GENERIC:
        assert fields is not None
        result, locations = load_generic(local, video_root, fields=fields, source=source)
    elif format == NEXTQA:
        result, locations = load_nextqa(local, video_root, video_map=video_map)
    elif format == PERCEPTIONTEST:
        result, locations = load_perceptiontest(local, video_root)
    elif format == LLAVA_VIDEO:
        result, locations = load_llava_video(local, video_root)
    else:
        result, locations = get_benchmark(format).load(annotations, video_root), {}
    return probe_durations(result, locations, progress=progress) if probe else result


def probe_durations(
    result: LoadResult,
    locations: Mapping[str, str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """``result`` with each found item's missing ``duration`` read from its video's header (one probe a video).

    Items whose video cannot be read (corrupt, not a video, ...) move to ``skipped``, located by
    ``locations[item.id]`` (else by the video path), with the error as the reason."""
    from msjoe.video import probe

    locations = locations or {}
    videos = list(dict.fromkeys(item.video for item in result.items if item.duration is None))
    durations: dict[str, float | str] = {}
    for done, video in enumerate(videos, start=1):
        try:
            durations[video] = probe(video).duration
        except VideoError as err:
            durations[video] = f"video cannot be read: {type(err).__name__}: {err}"
        if progress is not None:
            progress(done, len(videos))
    items, skipped = [], list(result.skipped)
    for item in result.items:
        value = durations.get(item.video) if item.duration is None else item.duration
        if isinstance(value, str):
            skipped.append(SkippedRow(locations.get(item.id, f"video {item.video}"), value))
        else:
            items.append(item if value == item.duration else replace(item, duration=value))
    return LoadResult(result.benchmark, items, list(result.missing), skipped, list(result.unrunnable))


def report_path(output: str | Path) -> Path:
    """Where :func:`write_import` puts the import report of ``output``: ``name.import.json`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.import.json")


def write_import(
    result: LoadResult,
    output: str | Path,
    *,
    keep_missing: bool = False,
    details: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the items as QA JSONL (video paths relative to the output's folder when inside it) and the import
    report (:func:`report_path`: counts, every missing video and every rejected row); both atomically. Items whose
    video is missing are written only with ``keep_missing``. Returns both paths."""
    output = Path(output)
    items = [*result.items, *(result.missing if keep_missing else [])]
    write_qa_jsonl(output, items, relative_to=output.parent)
    report = {
        **dict(details or {}),
        "format": result.benchmark,
        "items_written": len(items),
        "items_with_video": len(result.items),
        "items_missing_video": len(result.missing),
        "missing_videos": result.missing_videos,
        "missing_video_items_written": keep_missing,
        "rejected_rows": [row.to_dict() for row in result.skipped],
    }
    path = write_text_atomically(report_path(output), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return output, path
