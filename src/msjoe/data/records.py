"""Reading annotation files row by row, each row with the place it came from (``file:line``), so a rejected row
can be found in an editor.

:func:`read_records` yields ``(location, record)`` for JSON (a top-level list, or an object whose members are
records, keyed by the member name), JSONL, CSV and parquet files. JSON rows are located by the line their value
starts on (the standard ``json`` module gives no positions, so the top level is walked with
:meth:`json.JSONDecoder.raw_decode`); parquet rows, which have no lines, by their row number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_KINDS = ("json", "jsonl", "csv", "parquet")


@dataclass(frozen=True)
class Record:
    """One annotation row: ``value`` and where it is.

    Attributes:
        location: ``"file.json:12"`` (line where the row starts) or ``"file.parquet row 3"``.
        value: the row (a dict for CSV and parquet; any JSON value otherwise).
        key: the member name when the file is a JSON object of records (``{"video_1": {...}}``), else ``None``.
    """

    location: str
    value: Any
    key: str | None = None


class FileFormatError(ValueError):
    """The file as a whole cannot be read (not JSON, not a list or object of records...)."""


def file_kind(path: Path) -> str:
    """``json``, ``jsonl``, ``csv`` or ``parquet`` from the file's suffix; raises :class:`FileFormatError`."""
    suffix = path.suffix.lower().lstrip(".")
    kind = {"ndjson": "jsonl", "tsv": "csv"}.get(suffix, suffix)
    if kind not in FILE_KINDS:
        raise FileFormatError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; use one of .json, .jsonl, .csv, .parquet"
        )
    return kind


def read_records(path: str | Path) -> Iterator[Record]:
    """The rows of ``path`` with their locations (see the module notes); raises :class:`FileFormatError` when the
    file as a whole is unreadable. A JSONL line that is not valid JSON is yielded as a :class:`Record` whose value
    is a :class:`json.JSONDecodeError`, so the caller rejects that row alone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    kind = file_kind(path)
    if kind == "json":
        yield from _json_records(path)
    elif kind == "jsonl":
        yield from _jsonl_records(path)
    elif kind == "csv":
        yield from _csv_records(path)
    else:
        yield from _parquet_records(path)


def _jsonl_records(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                value: Any = json.loads(line)
            except json.JSONDecodeError as err:
                value = err
            yield Record(f"{path.name}:{number}", value)


def _csv_records(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8", newline="") as file:
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(file, dialect=dialect)
        if reader.fieldnames is None:
            return
        start = reader.line_num + 1
        for row in reader:
            # A cell quoted across lines makes a row span several lines: report the first.
            yield Record(f"{path.name}:{start}", {key: value for key, value in row.items() if key is not None})
            start = reader.line_num + 1


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq  # imported on use

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise FileFormatError(f"{path}: cannot read as parquet: {err}") from err
    for index, row in enumerate(rows):
        yield Record(f"{path.name} row {index}", row)


def _json_records(path: Path) -> Iterator[Record]:
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    position = _skip_space(text, 0)
    if position == len(text) or text[position] not in "[{":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise FileFormatError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        raise FileFormatError(f"{path}: expected a JSON list of records or an object of records")
    closing = "]" if text[position] == "[" else "}"
    position = _skip_space(text, position + 1)
    first = True
    while True:
        if position < len(text) and text[position] == closing:
            break
        if not first:
            if position >= len(text) or text[position] != ",":
                raise FileFormatError(f"{path}: invalid JSON at line {lines(position)}: expected ',' or '{closing}'")
            position = _skip_space(text, position + 1)
        first = False
        key = None
        try:
            if closing == "}":
                key, position = decoder.raw_decode(text, position)
                if not isinstance(key, str):
                    raise json.JSONDecodeError("expected a member name", text, position)
                position = _skip_space(text, position)
                if position >= len(text) or text[position] != ":":
                    raise json.JSONDecodeError("expected ':'", text, position)
                position = _skip_space(text, position + 1)
            start = position
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise FileFormatError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        yield Record(f"{path.name}:{lines(start)}", value, key)
        position = _skip_space(text, position)
    if _skip_space(text, position + 1) != len(text):
        raise FileFormatError(f"{path}: invalid JSON at line {lines(position + 1)}: extra data after the top level")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


class _LineCounter:
    """1-based line of a character position, counting newlines incrementally (positions only grow)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.line = 1

    def __call__(self, position: int) -> int:
        if position < self.position:  # never happens while walking forward; recount to stay correct
            self.position, self.line = 0, 1
        self.line += self.text.count("\n", self.position, position)
        self.position = position
        return self.line
