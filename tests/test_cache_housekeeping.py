"""Cache housekeeping: a read-only cache that already holds everything, leftovers of killed writers, and the
entry checksum's coverage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.synthetic_video import write_video


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time: any write changes it."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@contextmanager
def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``folder`` and everything in it made read-only. Root ignores permission bits, so for root the permission
    query (``os.access``) also answers "not writable" there, as it does on a read-only mount."""
    paths = [folder, *folder.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path: object, mode: int, **kwargs: object) -> bool:
            if mode & os.W_OK and Path(str(path)).resolve().is_relative_to(folder.resolve()):
                return False
            return real_access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)
    try:
        yield
    finally:
        monkeypatch.undo()
        for path in reversed(paths):
            path.chmod(modes[path])


def test_index_on_a_read_only_cache_that_holds_every_video(
    tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    videos = [write_video(tmp_path / f"v{i}.mp4", duration=3.0 + i, fps=4.0, size=(64, 48)) for i in range(2)]
    cache = tmp_path / "cache"
    common = ["--clip", tiny_clip_dir, "--cache-dir", cache, "--store-frames"]
    code, output = run("index", videos[0], *common)
    assert code == 0, output
    before = snapshot(cache)
    with read_only(cache, monkeypatch):
        code, output = run("index", videos[0], *common)
        assert code == 0 and "0 indexed, 1 already cached, 0 failed" in output, output
        assert snapshot(cache) == before  # nothing written, nothing deleted

        # A video that does need indexing still stops the job with the reason, before it is decoded.
        code, output = run("index", videos[0], videos[1], *common)
        assert code == 1 and f"the feature cache directory {cache} is not writable" in output
        assert snapshot(cache) == before
