"""File safety, in one place: atomic whole-file writes (temp file beside the target, fsync, rename), the folder
fsync that makes a rename durable, the cleanup of leftovers, and :class:`KeyedJsonlLog`, the crash-safe
append-only JSONL file behind the evaluation's prediction logs and the training's reply caches. Torch-free, so the
data and evaluation layers can use it without importing the model stack. Cache entries go through
:func:`msjoe.cache.atomic_writer`, which adds the cache's error messages.

Temporary files are created by :func:`create_temp_file`:

- with the permissions of any other new file (0666 minus the umask). ``tempfile.mkstemp`` would give 0600 whatever
  the umask, and the rename would carry that onto the final file, so a cache or output folder shared between users
  (which the README recommends for multi-process runs) would hold files only their writer can read;
- holding an exclusive ``flock`` until the file is renamed or removed, and named after the writing host and
  process. The lock dies with its process, so :func:`remove_stale_temp_files` can tell the leftover of a killed
  writer (deleted at once) from a file being written right now by another process (kept), without guessing from
  its age. Where locks are not available (Windows, some network file systems) only age tells: an hour.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
"""Suffix of every temporary file of an atomic write (leftovers of a crash are recognised by it)."""

NEW_FILE_MODE = 0o666
"""Mode new files are created with; the process's umask clears bits from it (0644 with the usual 022)."""

STALE_TEMP_AGE_S = 3600.0
"""A temp file whose writer cannot be checked (no lock support, another version's file) is deleted after this
long without a write: a live write touches its file every few seconds."""

UNLOCKED_GRACE_S = 1.0
"""An unlocked temp file younger than this is kept: its writer may be between creating and locking it."""

# <prefix><writer>.<random>.tmp, writer = <8 hex of the host name>-<pid>
_WRITER_NAME = re.compile(r"(?P<writer>[0-9a-f]{8}-[0-9]+)\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$")


def _this_writer() -> str:
    """Host and process, as written in temp file names (the host hashed: names stay short and plain)."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}-{os.getpid()}"


def create_temp_file(directory: str | Path, prefix: str, suffix: str = TEMP_SUFFIX) -> tuple[int, Path]:
    """Create a new, empty file with a unique name in ``directory``; return an open read-write descriptor and its
    path. Like ``tempfile.mkstemp`` (exclusive creation, never follows a planted symlink), but the mode is
    :data:`NEW_FILE_MODE` minus the umask instead of 0600, the name says which host and process wrote it, and
    the descriptor holds an exclusive ``flock`` (released when it, and every duplicate of it, is closed)."""
    directory = Path(directory)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = directory / f"{prefix}{_this_writer()}.{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(path, flags, NEW_FILE_MODE)
        except FileExistsError:  # 48 random bits: only a pathological directory gets here twice
            continue
        if fcntl is not None:
            with suppress(OSError):  # no lock support here: cleanup falls back to the file's age
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, path
    raise FileExistsError(f"could not create a temporary file in {directory}: every name tried exists")


@contextmanager
def atomic_file(
    path: str | Path, *, prefix: str | None = None, on_write_error: Callable[[OSError], Exception] | None = None
) -> Iterator[BinaryIO]:
    """A binary file (``w+b``: writers may seek back) whose content replaces ``path`` when the block ends, so a
    reader, or a crash, sees the old file or the new one, never part of it.

    The file is a temp file in ``path``'s folder (a rename is atomic only within a file system; the folder must
    exist), named ``prefix`` (default ``.<name>.``) + writer + random + :data:`TEMP_SUFFIX`. On a clean exit it is
    fsynced (a power loss cannot leave a renamed but empty file), renamed onto ``path`` and the folder fsynced
    (the rename itself is durable). If the block raises, the temp file is removed, ``path`` is untouched and the
    exception propagates; a failing flush, fsync or rename raises ``on_write_error(error)`` when given.
    """
    path = Path(path)
    fd, temp = create_temp_file(path.parent, prefix=f".{path.name}." if prefix is None else prefix)
    # The lock must outlive the file object: it is closed before the rename (Windows cannot rename an open file),
    # and a checker that found the file unlocked in between would delete it under our feet.
    lock_keeper = os.dup(fd) if fcntl is not None else None
    body_done = False
    try:
        with os.fdopen(fd, "w+b") as file:
            yield file
            body_done = True
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as err:
        temp.unlink(missing_ok=True)
        if body_done and isinstance(err, OSError) and on_write_error is not None:
            raise on_write_error(err) from err
        raise
    finally:
        if lock_keeper is not None:
            os.close(lock_keeper)
    fsync_folder(path.parent)


def fsync_folder(folder: str | Path, *, strict: bool = False) -> None:
    """Make the renames and creations in ``folder`` durable (fsync its directory entry). Platforms without
    directory descriptors (Windows) are skipped: a rename there is still atomic. A failing fsync is ignored (some
    file systems refuse it on folders) unless ``strict``."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(dir_fd)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it onto ``path``, so a reader (or a
    crash) sees the old file or the new one, never half of it. Creates missing parent folders."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """:func:`write_text_atomically` for bytes (images, binary files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as file:
        file.write(data)
    return path


def _writer_is_gone(temp: Path) -> bool | None:
    """Whether the process that created ``temp`` (by :func:`create_temp_file`) has ended: True when nobody holds
    its lock, False while somebody does (or it is this process's own), None when this cannot be told."""
    match = _WRITER_NAME.search(temp.name)
    if match is None or fcntl is None:
        return None  # not made by create_temp_file (an older version's file), or no locks on this platform
    if match["writer"] == _this_writer():
        return False  # our own: a write in progress in another thread (on NFS our own lock would not stop us)
    try:
        fd = os.open(temp, os.O_RDONLY)
    except OSError:
        return None  # gone already, or not ours to read
    try:
        # A shared lock conflicts only with the writer's exclusive one; it needs read access alone.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None  # the file system does not support locks
    finally:
        os.close(fd)


def remove_stale_temp_files(directory: Path, older_than_s: float = STALE_TEMP_AGE_S) -> int:
    """Delete the leftovers of crashed or killed atomic writes in ``directory``; return how many.

    A temp file goes as soon as its writer has ended (its lock is free), whatever its age; one whose writer is
    still running stays, however old; one whose writer cannot be checked goes after ``older_than_s`` seconds
    without a write.
    """
    removed = 0
    now = time.time()
    try:
        candidates = [p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return 0
    for candidate in candidates:
        try:
            age = now - candidate.stat().st_mtime
            gone = _writer_is_gone(candidate)
            if gone and age < UNLOCKED_GRACE_S:
                continue  # its writer may be between creating and locking it
            if gone or (gone is None and age > older_than_s):
                candidate.unlink()
                removed += 1
        except OSError:
            continue  # another process removed or renamed it first, or it is not ours to remove
    return removed


def umask_file_mode() -> int:
    """The mode a new file gets in this process: :data:`NEW_FILE_MODE` minus the umask (read without a race by
    setting it back at once; there is no getter before Python 3.13 on Linux)."""
    current = os.umask(0)
    os.umask(current)
    return NEW_FILE_MODE & ~current


def apply_umask_to_files(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode a new file gets here. For folders written by libraries that create
    files with 0600 whatever the umask (safetensors' ``save_file``, hence every ``save_pretrained``), so that a
    checkpoint or an exported model in a shared folder is readable as the umask intends."""
    mode = umask_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


class KeyedJsonlLog:
    """An append-only JSONL file of records (JSON objects), each naming itself by a string field ``key``, that
    survives crashes; later records of a key supersede earlier ones. :meth:`write` is thread-safe.

    Each :meth:`write` is one ``write`` of whole lines on an ``O_APPEND`` descriptor: once it returns, the records
    survive a crash of the process, and with ``durable`` (an fsync) a power loss too. Opening reads the file; a last
    line without its newline is the trace of a crash mid-write: it is kept when it is a whole record (the crash hit
    between the record and its newline) and cut off otherwise, with a warning ending in ``redo``. Any other
    unreadable line is, when ``strict``, an error naming the file and line (the file was not written by this
    class), else skipped with a warning (a lost line only costs redoing its work) and counted in
    :attr:`skipped_lines`.

    One writing process per file: a process repairing a torn last line could cut another's append. Other
    processes' files are read with :meth:`read_other`, never repaired.

    Args:
        path: the file (its folder is created; the file on the first write); None keeps the records in memory only.
        key: the field naming a record (``"id"``, ``"key"``).
        what: what a record is, for error messages (``"prediction record"``).
        redo: what a dropped line costs, for messages (``"its item is answered again"``).
        durable: fsync every write and repair.
        strict: an unreadable line (other than a torn last one) is an error instead of a warning.
    """

    def __init__(
        self, path: str | Path | None, *, key: str, what: str, redo: str, durable: bool = False, strict: bool = False
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self.what = what
        self.redo = redo
        self.durable = durable
        self.strict = strict
        self.records: dict[str, dict[str, Any]] = {}
        self.repaired = False
        """Whether opening repaired a torn last line."""
        self.skipped_lines = 0
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._load()

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` (each with a string ``key`` field), one line each, with one write."""
        if not records:
            return
        if self.path is None:
            self.records.update({str(record[self.key]): dict(record) for record in records})
            return
        data = "".join(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records)
        encoded = data.encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, NEW_FILE_MODE)  # minus the umask
            try:
                written = os.write(fd, encoded)
                while written < len(encoded):  # a short write (disk full): finish it, or the next line shares it
                    written += os.write(fd, encoded[written:])
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self.records.update({str(record[self.key]): dict(record) for record in records})

    def read_other(self, paths: Sequence[str | Path]) -> None:
        """Also read other processes' files (their complete lines; a torn last line is ignored, not repaired). Their
        records come before this file's own: a key in both keeps this file's record."""
        own, self.records = self.records, {}
        for path in map(Path, paths):
            self._read_lines(path, path.read_bytes().rpartition(b"\n")[0])
        self.records.update(own)

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        complete, newline, tail = data.rpartition(b"\n")
        if tail.strip():
            whole = self._parse(tail) is not None
            with self.path.open("r+b") as file:
                if whole:
                    file.seek(0, os.SEEK_END)
                    file.write(b"\n")
                else:
                    logger.warning("%s: dropping a partial last line (a crash mid-write); %s", self.path, self.redo)
                    file.truncate(len(complete) + len(newline))
                file.flush()
                if self.durable:
                    os.fsync(file.fileno())
            self.repaired = True
            data = self.path.read_bytes()
        self._read_lines(self.path, data)

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        """The record on ``line`` if it is a JSON object with the key field, else None."""
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and self.key in record else None

    def _read_lines(self, path: Path, data: bytes) -> None:
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            record = self._parse(line)
            if record is not None and isinstance(record[self.key], str):
                self.records[record[self.key]] = record
            elif self.strict:
                self._raise_unreadable(path, number, line)
            else:
                self.skipped_lines += 1
                logger.warning("%s:%d: skipping an unreadable %s line", path, number, self.what)

    def _raise_unreadable(self, path: Path, number: int, line: bytes) -> None:
        # Name the line and what deleting it costs: the other lines are finished work worth keeping.
        fix = f"fix line {number} or delete that line alone ({self.redo}); keep the others"
        try:
            json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
            raise ValueError(f"{path}:{number}: not a {self.what} ({reason}): {fix}") from None
        raise ValueError(f"{path}:{number}: a {self.what} needs a string {self.key!r}: {fix}")
