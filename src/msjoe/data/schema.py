"""The one QA schema every dataset and benchmark is converted to, and its JSONL file format.

A :class:`QAItem` is one multiple-choice question about one video. Options are stored as plain texts, without
letter labels: the letter of an option is implied by its position (``A`` first), and ``answer`` is that letter.
Each benchmark keeps its own breakdown fields (VideoMME's duration bucket and domain, LVBench's question types,
...) in ``categories``, so scoring can report per category without knowing the source format.

JSONL: one JSON object per line with the fields of :class:`QAItem` (see :data:`FIELDS`); blank lines are
ignored. :func:`read_qa_jsonl` rejects malformed rows with a :class:`QAFormatError` naming the file, the line and
the field; relative video paths are resolved against ``video_root`` or, by default, the JSONL file's folder.
:func:`write_qa_jsonl` writes atomically (a reader never sees a half-written file).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from msjoe.atomic import write_text_atomically
from msjoe.checks import is_number
from msjoe.mllm.prompts import option_letters

MIN_OPTIONS = 2


class QAFormatError(ValueError):
    """A QA record (or one line of a QA JSONL file) does not follow the schema.

    Attributes:
        field: the offending field, or ``None`` when the record as a whole is wrong (not an object, bad JSON).
        path: the file, when the record came from one.
        line: the 1-based line number in ``path``.
    """

    def __init__(self, message: str, *, field: str | None = None, path: Path | None = None, line: int | None = None):
        self.field = field
        self.path = path
        self.line = line
        self.detail = message
        where = f"{path}:{line}: " if path is not None and line is not None else ""
        what = f"field {field!r}: " if field is not None else ""
        super().__init__(f"{where}{what}{message}")


@dataclass(frozen=True)
class QAItem:
    """One multiple-choice question about one video.

    Attributes:
        id: unique within its source (benchmarks keep their official question id, so official prediction files
            can be matched).
        video: path of the video file.
        question: the question text, without the options.
        options: option texts without letter labels; option ``i`` has letter ``"ABC..."[i]``. At least 2.
        answer: the correct option's letter, or ``None`` when the split has no public ground truth.
        duration: video length in seconds, when the source states it.
        source: where the item comes from (``"videomme"``, ``"lvbench"``, a training set name...).
        task: the item's main task or question type, for quick filtering.
        categories: breakdown fields used for per-category scores: name -> value, or list of values when an item
            belongs to several groups (LVBench's question types).
        difficulty: the base model's pass rate with uniform frames, in [0, 1] (the RL reward uses it).
        evidence: time spans ``(start, end)`` in seconds that hold the answer, when known.
        meta: other fields of the source record (ids, URLs, subtitle paths...), JSON-serialisable.
    """

    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    duration: float | None = None
    source: str = ""
    task: str | None = None
    categories: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    difficulty: float | None = None
    evidence: tuple[tuple[float, float], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise containers so items built in code and items read from JSON compare equal.
        object.__setattr__(self, "options", _check_options(self.options))
        object.__setattr__(self, "categories", _check_categories(self.categories))
        object.__setattr__(self, "evidence", _check_evidence(self.evidence))
        if not isinstance(self.meta, Mapping) or not all(isinstance(key, str) for key in self.meta):
            raise QAFormatError("must be an object with string keys", field="meta")
        object.__setattr__(self, "meta", dict(self.meta))
        for name in ("id", "video", "question"):
            _check_text(getattr(self, name), name)
        if not isinstance(self.source, str):
            raise QAFormatError(f"must be a string, got {type(self.source).__name__}", field="source")
        if self.task is not None:
            _check_text(self.task, "task")
        if self.answer is not None:
            letters = option_letters(len(self.options))
            if not isinstance(self.answer, str) or self.answer not in letters:
                raise QAFormatError(
                    f"must be one of the option letters {', '.join(letters)} (or null), got {self.answer!r}",
                    field="answer",
                )
        if self.duration is not None:
            object.__setattr__(self, "duration", _check_number(self.duration, "duration", low=0.0))
        if self.difficulty is not None:
            object.__setattr__(self, "difficulty", _check_number(self.difficulty, "difficulty", low=0.0, high=1.0))

    def __hash__(self) -> int:
        # The generated hash would fail on the dict fields; (source, id) identifies an item and equal items share it.
        return hash((self.source, self.id))

    @property
    def letters(self) -> list[str]:
        """The option letters, ``["A", "B", ...]``."""
        return option_letters(len(self.options))

    @property
    def video_key(self) -> str:
        """The video as an absolute path with symlinks resolved: items naming one file differently share it
        (grouping by video when indexing, splitting work between processes)."""
        return str(Path(self.video).expanduser().resolve())

    @property
    def answer_text(self) -> str | None:
        """The text of the correct option, or ``None`` without ground truth."""
        return None if self.answer is None else self.options[self.letters.index(self.answer)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of this item (lists for tuples), fields in :data:`FIELDS` order."""
        return {
            "id": self.id,
            "video": self.video,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "duration": self.duration,
            "source": self.source,
            "task": self.task,
            "categories": {k: list(v) if isinstance(v, tuple) else v for k, v in self.categories.items()},
            "difficulty": self.difficulty,
            "evidence": [list(span) for span in self.evidence],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, record: object) -> QAItem:
        """Build an item from a JSON record; required fields are ``id``, ``video``, ``question``, ``options``
        and ``answer`` (which may be ``null``); unknown fields are rejected (put extras in ``meta``)."""
        if not isinstance(record, Mapping):
            raise QAFormatError(f"a QA record must be a JSON object, got {type(record).__name__}")
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            raise QAFormatError(
                f"unknown field (extra fields belong in 'meta'); known: {', '.join(FIELDS)}", field=str(unknown[0])
            )
        for name in REQUIRED_FIELDS:
            if name not in record:
                raise QAFormatError("is required", field=name)
        values = {name: record[name] for name in FIELDS if name in record and record[name] is not None}
        if "answer" not in values:
            values["answer"] = None
        for name in ("categories", "meta"):
            if name in values and not isinstance(values[name], Mapping):
                raise QAFormatError(f"must be an object, got {type(values[name]).__name__}", field=name)
        return cls(**values)


FIELDS = (
    "id", "video", "question", "options", "answer", "duration", "source", "task", "categories", "difficulty",
    "evidence", "meta",
)  # fmt: skip
REQUIRED_FIELDS = ("id", "video", "question", "options", "answer")


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise QAFormatError(f"must be a string, got {type(value).__name__}", field=name)
    if not value.strip():
        raise QAFormatError("must not be empty", field=name)


def _check_number(value: object, name: str, *, low: float, high: float = math.inf) -> float:
    if not is_number(value):
        raise QAFormatError(f"must be a number, got {type(value).__name__}", field=name)
    if not math.isfinite(value) or not low <= value <= high:
        bounds = f">= {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g}]"
        raise QAFormatError(f"must be a finite number {bounds}, got {value!r}", field=name)
    return float(value)


def _check_options(options: object) -> tuple[str, ...]:
    if isinstance(options, str | bytes) or not isinstance(options, Sequence):
        raise QAFormatError(f"must be a list of strings, got {type(options).__name__}", field="options")
    if not MIN_OPTIONS <= len(options) <= 26:
        raise QAFormatError(f"must hold {MIN_OPTIONS} to 26 options, got {len(options)}", field="options")
    for index, option in enumerate(options):
        if not isinstance(option, str):
            raise QAFormatError(f"option {index} must be a string, got {type(option).__name__}", field="options")
        if not option.strip():
            raise QAFormatError(f"option {index} is empty", field="options")
    return tuple(options)


def _check_categories(categories: object) -> dict[str, str | tuple[str, ...]]:
    if not isinstance(categories, Mapping):
        raise QAFormatError(f"must be an object, got {type(categories).__name__}", field="categories")
    checked: dict[str, str | tuple[str, ...]] = {}
    for key, value in categories.items():
        if not isinstance(key, str) or not key:
            raise QAFormatError(f"keys must be non-empty strings, got {key!r}", field="categories")
        if isinstance(value, str) and value:
            checked[key] = value
        elif (
            isinstance(value, Sequence)
            and not isinstance(value, str | bytes)
            and value
            and all(isinstance(v, str) and v for v in value)
        ):
            checked[key] = tuple(value)
        else:
            raise QAFormatError(
                f"{key!r} must be a non-empty string or a non-empty list of them, got {value!r}", field="categories"
            )
    return checked


def _check_evidence(evidence: object) -> tuple[tuple[float, float], ...]:
    if isinstance(evidence, str | bytes) or not isinstance(evidence, Iterable):
        raise QAFormatError(f"must be a list of [start, end] spans, got {type(evidence).__name__}", field="evidence")
    spans = []
    for index, span in enumerate(evidence):
        if isinstance(span, str | bytes) or not isinstance(span, Sequence) or len(span) != 2:
            raise QAFormatError(f"span {index} must be [start, end] in seconds, got {span!r}", field="evidence")
        start = _check_number(span[0], "evidence", low=0.0)
        end = _check_number(span[1], "evidence", low=0.0)
        if end < start:
            raise QAFormatError(f"span {index} ends before it starts: {span!r}", field="evidence")
        spans.append((start, end))
    return tuple(spans)


# --------------------------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------------------------
def read_qa_jsonl(path: str | Path, *, video_root: str | Path | None = None) -> list[QAItem]:
    """Read a QA JSONL file; raise :class:`QAFormatError` (file, line, field) on the first malformed row.

    Relative ``video`` paths are resolved against ``video_root``, or against the JSONL file's folder when it is
    ``None``, so a dataset folder can be moved as a whole. Ids must be unique within a ``source``.
    """
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    items: list[QAItem] = []
    seen: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise QAFormatError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=number) from None
            try:
                item = QAItem.from_dict(record)
            except QAFormatError as err:
                raise QAFormatError(err.detail, field=err.field, path=path, line=number) from None
            key = (item.source, item.id)
            if key in seen:
                raise QAFormatError(
                    f"duplicate id {item.id!r} (source {item.source!r}), first on line {seen[key]}",
                    field="id",
                    path=path,
                    line=number,
                )
            seen[key] = number
            video = Path(item.video).expanduser()
            if not video.is_absolute():
                item = replace(item, video=str(root / video))
            items.append(item)
    return items


def write_qa_jsonl(path: str | Path, items: Iterable[QAItem], *, relative_to: str | Path | None = None) -> Path:
    """Write ``items`` as JSONL, atomically; return the path.

    With ``relative_to``, video paths inside that folder are written relative to it (pass the JSONL's own folder
    to make the file portable together with its videos). Raises :class:`QAFormatError` naming the item if its
    ``meta`` is not JSON-serialisable.
    """
    path = Path(path)
    base = Path(relative_to).resolve() if relative_to is not None else None
    lines = []
    for item in items:
        record = item.to_dict()
        if base is not None:
            video = Path(item.video).resolve()
            if video.is_relative_to(base):
                record["video"] = video.relative_to(base).as_posix()
        try:
            lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise QAFormatError(f"item {item.id!r} cannot be written as JSON: {err}", field="meta") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(line + "\n" for line in lines))
    return path
