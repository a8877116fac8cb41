"""Files msjoe creates get the permissions the umask asks for (0644 with the usual 022), so a cache or output
folder shared between users stays readable by them: atomic writes used to leave every file 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msjoe.atomic import create_temp_file, write_bytes_atomically, write_text_atomically
from msjoe.cache import atomic_writer
from msjoe.cli import app
from msjoe.eval.harness import PredictionLog, write_reports
from msjoe.train.data import ReplyCache


@pytest.fixture(params=[0o002, 0o022, 0o077], ids=lambda mask: f"umask{mask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(umask: int, tmp_path: Path) -> None:
    expected = 0o666 & ~umask
    assert mode(write_text_atomically(tmp_path / "report.md", "# hi\n")) == expected
    assert mode(write_bytes_atomically(tmp_path / "plot.png", b"\x89PNG")) == expected
    with atomic_writer(tmp_path / "entry.safetensors") as file:
        file.write(b"data")
    assert mode(tmp_path / "entry.safetensors") == expected
    fd, temp = create_temp_file(tmp_path, prefix=".x.")
    os.close(fd)
    assert mode(temp) == expected and temp.name.startswith(".x.") and temp.name.endswith(".tmp")


def test_cache_and_frame_store_entries_follow_the_umask(
    umask: int, tiny_clip_dir: Path, short_video: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    args = ["index", short_video, "--store-frames", "--clip", tiny_clip_dir, "--cache-dir", cache]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    entries = list(cache.rglob("*.safetensors"))
    assert len(entries) == 2  # the features and the frames
    assert {mode(entry) for entry in entries} == {0o666 & ~umask}
    assert {mode(folder) for folder in cache.rglob("*") if folder.is_dir()} == {0o777 & ~umask}


def test_reports_and_jsonl_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    scores_path, report_path = write_reports(tmp_path / "out", {"benchmarks": {}})
    log = PredictionLog(tmp_path / "out" / "predictions.jsonl")
    log.append({"id": "q0", "reply": "A"})
    replies = ReplyCache(tmp_path / "replies.jsonl")
    replies.put(ReplyCache.key({"q": 1}), {"reply": "A"})
    for path in (scores_path, report_path, log.path, replies.path):
        assert mode(path) == 0o666 & ~umask, path.name
