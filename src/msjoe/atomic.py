"""Atomic whole-file writes (temp file beside the target, fsync, rename) and the cleanup of their leftovers;
torch-free, so the data and evaluation layers can use it without importing the model stack. Cache entries go
through :func:`msjoe.cache.atomic_writer`, which adds the cache's error messages.

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
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

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
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds (Windows): the rename is still atomic
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
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
