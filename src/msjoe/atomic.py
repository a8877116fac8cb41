"""Whole-file atomic writes for reports, settings and JSONL files (torch-free, so the data and evaluation
layers can use it without importing the model stack). Binary cache entries use :func:`msjoe.cache.atomic_writer`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it onto ``path``, so a reader (or a
    crash) sees the old file or the new one, never half of it. Creates missing parent folders."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """:func:`write_text_atomically` for bytes (images, binary files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
