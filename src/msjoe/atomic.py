"""Whole-file atomic writes for reports, settings and JSONL files (torch-free, so the data and evaluation
layers can use it without importing the model stack). Binary cache entries use :func:`msjoe.cache.atomic_writer`.

Every temporary file is created by :func:`create_temp_file`, with the permissions of any other new file (0666
minus the umask). ``tempfile.mkstemp`` would give 0600 whatever the umask, and the rename would carry that onto
the final file, so a cache or output folder shared between users (which the README recommends for
multi-process runs) would hold files only their writer can read.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".tmp"
"""Suffix of every temporary file of an atomic write (leftovers of a crash are recognised by it)."""

NEW_FILE_MODE = 0o666
"""Mode new files are created with; the process's umask clears bits from it (0644 with the usual 022)."""


def create_temp_file(directory: str | Path, prefix: str, suffix: str = TEMP_SUFFIX) -> tuple[int, Path]:
    """Create a new, empty file with a random name in ``directory``; return an open read-write descriptor and
    its path. Like ``tempfile.mkstemp`` (exclusive creation, never follows a planted symlink), but the mode is
    :data:`NEW_FILE_MODE` minus the umask instead of 0600."""
    directory = Path(directory)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, NEW_FILE_MODE), path
        except FileExistsError:  # 48 random bits: only a pathological directory gets here twice
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}: every name tried exists")


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it onto ``path``, so a reader (or a
    crash) sees the old file or the new one, never half of it. Creates missing parent folders."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """:func:`write_text_atomically` for bytes (images, binary files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
