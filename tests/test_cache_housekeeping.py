"""Cache housekeeping: a read-only cache that already holds everything, leftovers of killed writers, and the
entry checksum's coverage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from msjoe.atomic import STALE_TEMP_AGE_S, remove_stale_temp_files
from msjoe.cache import CacheKey, FeatureCache, FrameFeatures, atomic_writer
from msjoe.cli import app
from msjoe.frame_store import FrameStore
from msjoe.synthetic_video import write_video
from msjoe.video import VideoInfo


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


# --- leftovers of killed writers ------------------------------------------------------------------------------
WRITER = """
import sys, time
from pathlib import Path
from msjoe.cache import CacheKey, FeatureCache, FrameFeatures, atomic_writer
with atomic_writer(Path(sys.argv[1])) as file:
    file.write(b"half an entry")
    file.flush()
    print("writing", flush=True)
    time.sleep(600)
"""

STORE_BUILDER = """
import sys, time
from msjoe.cache import FeatureCache
from msjoe.frame_store import FrameStore

def stop_here(done, total):
    print("building", flush=True)
    time.sleep(600)

FrameStore.for_cache(FeatureCache(sys.argv[1])).build(sys.argv[2], progress=stop_here)
"""


@contextmanager
def started(script: str, *args: object) -> Iterator[subprocess.Popen[str]]:
    """A Python process running ``script`` that has printed its first line (it then waits to be killed)."""
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip(), "the writer did not start"
        yield process
    finally:
        process.kill()
        process.wait(timeout=60)


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def age(path: Path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_a_killed_writers_temp_file_goes_at_once_a_live_ones_stays(tmp_path: Path) -> None:
    entry = tmp_path / "ab" / "entry.safetensors"
    entry.parent.mkdir()
    with started(WRITER, entry) as writer:
        (temp,) = temp_files(tmp_path)
        age(temp, 2 * 3600)  # older than the age rule: the writer's lock still keeps it
        assert remove_stale_temp_files(entry.parent) == 0 and temp.exists()
        writer.kill()
        writer.wait(timeout=60)
    age(temp, 2)  # seconds, not an hour, after the writer died
    assert remove_stale_temp_files(entry.parent) == 1 and not temp.exists() and not entry.exists()


def test_this_process_never_removes_its_own_write_in_progress(tmp_path: Path) -> None:
    entry = tmp_path / "entry.safetensors"
    with atomic_writer(entry) as file:
        file.write(b"in progress")
        (temp,) = temp_files(tmp_path)
        age(temp, 2 * 3600)
        assert remove_stale_temp_files(tmp_path) == 0 and temp.exists()
    assert entry.read_bytes() == b"in progress" and not temp_files(tmp_path)


def test_a_temp_file_without_a_writer_name_still_waits_for_the_age_rule(tmp_path: Path) -> None:
    # Written by an older msjoe, whose writers took no lock: only its age says it is abandoned.
    unnamed = tmp_path / ".entry.abc.tmp"
    unnamed.write_bytes(b"?")
    age(unnamed, 60)
    assert remove_stale_temp_files(tmp_path) == 0
    age(unnamed, 2 * STALE_TEMP_AGE_S)
    assert remove_stale_temp_files(tmp_path) == 1


def test_rerunning_a_killed_store_frames_index_removes_its_temp_file(tiny_clip_dir: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", duration=4.0, fps=4.0, size=(64, 48))
    cache = tmp_path / "cache"
    with started(STORE_BUILDER, cache, video):
        (temp,) = temp_files(cache / "frames")  # killed while building the frame store entry
    age(temp, 2)
    code, output = run("index", video, "--store-frames", "--clip", tiny_clip_dir, "--cache-dir", cache)
    assert code == 0, output
    assert not temp_files(cache) and len(list((cache / "frames").rglob("*.safetensors"))) == 1


# --- the checksum covers the metadata -------------------------------------------------------------------------
def same_length_edit(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes of a file's header in place, keeping its length: still a well-formed safetensors file."""
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, data[:2000]
    path.write_bytes(data.replace(old, new))


KEY = CacheKey("f" * 32, "/models/clip", "rev", 1.0, 64)


def features(num_frames: int = 5) -> FrameFeatures:
    info = VideoInfo("/videos/a.mp4", float(num_frames), 25.0, 25 * num_frames, "h264", 128, 72, 0, 0.0)
    embeddings = torch.nn.functional.normalize(torch.randn(num_frames, 8, generator=torch.Generator().manual_seed(0)))
    return FrameFeatures(np.arange(num_frames) + 0.5, embeddings, info, KEY.model_id, KEY.revision, 1.0, 64)


def test_damaged_feature_cache_metadata_is_caught(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(KEY, features())
    assert cache.get(KEY).video_info.height == 72
    # The probe info is used later (decoding sizes): a damaged value must not be served.
    same_length_edit(cache.path(KEY), b'\\"height\\": 72', b'\\"height\\": 27')
    assert cache.get(KEY) is None and not cache.path(KEY).exists()
    assert "checksum mismatch (damaged data or metadata)" in caplog.text


def test_feature_cache_entries_of_earlier_versions_are_still_read(tmp_path: Path) -> None:
    # Written before the checksum covered the metadata: no scope field, a SHA-256 of the tensor bytes alone.
    from safetensors.torch import save

    cache = FeatureCache(tmp_path, storage_dtype=torch.float32)
    stored = features()
    embeddings, timestamps = stored.embeddings.contiguous(), torch.from_numpy(stored.timestamps.astype(np.float64))
    tensor_sha = hashlib.sha256(embeddings.numpy().tobytes() + timestamps.numpy().tobytes()).hexdigest()
    metadata = {
        "format": "msjoe-frame-features", "format_version": "1", "key": json.dumps(KEY.as_dict(), sort_keys=True),
        "video": json.dumps(dataclasses.asdict(stored.video), sort_keys=True), "num_frames": "5", "embed_dim": "8",
        "created": "2026-01-01T00:00:00+00:00", "checksum": f"sha256:{tensor_sha}",
    }  # fmt: skip
    cache.path(KEY).parent.mkdir(parents=True)
    cache.path(KEY).write_bytes(save({"embeddings": embeddings, "timestamps": timestamps}, metadata=metadata))
    loaded = cache.get(KEY)
    assert loaded is not None and torch.equal(loaded.embeddings, embeddings) and loaded.video == stored.video


def test_damaged_frame_store_metadata_is_caught(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = write_video(tmp_path / "v.mp4", duration=3.0, fps=4.0, size=(64, 48))
    store = FrameStore(tmp_path / "frames")
    store.build(video)
    assert store.has(video)
    (entry,) = (tmp_path / "frames").rglob("*.safetensors")
    same_length_edit(entry, b'\\"height\\": 48', b'\\"height\\": 84')  # the video's size: sets the served size
    assert not store.has(video) and not entry.exists()
    assert "index checksum mismatch (damaged data or metadata)" in caplog.text
