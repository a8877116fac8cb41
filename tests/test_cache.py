"""FeatureCache and fingerprint: round trips, keys, corruption handling, atomic and concurrent writes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from msjoe.cache import (
    FINGERPRINT_CHUNK,
    FORMAT_VERSION,
    CacheKey,
    FeatureCache,
    FrameFeatures,
    default_cache_dir,
    fingerprint,
)
from msjoe.errors import CacheError, VideoNotFoundError
from msjoe.video import VideoInfo

KEY = CacheKey(fingerprint="f" * 32, model_id="/models/tiny-clip", revision="local-abc", fps=1.0, max_frames=4096)


def make_features(num_frames: int = 7, dim: int = 16, seed: int = 0) -> FrameFeatures:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(num_frames, dim, generator=generator), dim=-1)
    info = VideoInfo("/videos/a.mp4", float(num_frames), 25.0, 25 * num_frames, "h264", 128, 72, 0, 0.0)
    return FrameFeatures(
        timestamps=np.arange(num_frames, dtype=np.float64) + 0.5,
        embeddings=embeddings,
        video=info,
        model_id=KEY.model_id,
        revision=KEY.revision,
        fps=KEY.fps,
        max_frames=KEY.max_frames,
    )


def visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- fingerprint -----------------------------------------------------------------------------------------------


def write_random_file(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        value = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([value ^ 0xFF]))


def test_fingerprint_follows_content_not_path_or_mtime(tmp_path: Path) -> None:
    original = write_random_file(tmp_path / "a.mp4", 5 * FINGERPRINT_CHUNK + 123)
    copy = tmp_path / "elsewhere" / "b.mp4"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)  # a plain copy: new path, new mtime, same bytes
    os.utime(copy, (0, 0))
    assert fingerprint(copy) == fingerprint(original)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_fingerprint_changes_when_a_sampled_region_changes(tmp_path: Path, where: str) -> None:
    size = 5 * FINGERPRINT_CHUNK + 123
    path = write_random_file(tmp_path / "a.mp4", size)
    before = fingerprint(path)
    offset = {"first": 10, "middle": size // 2, "last": size - 10}[where]
    flip_byte(path, offset)
    assert fingerprint(path) != before


def test_fingerprint_changes_with_size_and_hashes_small_files_whole(tmp_path: Path) -> None:
    path = write_random_file(tmp_path / "small.mp4", 2 * FINGERPRINT_CHUNK)
    before = fingerprint(path)
    flip_byte(path, FINGERPRINT_CHUNK + 7)  # outside the first MiB: still seen, the file is hashed whole
    after_flip = fingerprint(path)
    with path.open("ab") as file:
        file.write(b"\0")
    assert len({before, after_flip, fingerprint(path)}) == 3


def test_fingerprint_of_a_missing_file_is_a_video_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(VideoNotFoundError, match=r"nope\.mp4"):
        fingerprint(tmp_path / "nope.mp4")


# --- keys and round trips --------------------------------------------------------------------------------------


def test_round_trip_returns_what_put_returned(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    features = make_features()
    stored = cache.put(KEY, features)
    loaded = cache.get(KEY)
    assert loaded is not None
    assert torch.equal(loaded.embeddings, stored.embeddings) and loaded.embeddings.dtype == torch.float32
    assert np.array_equal(loaded.timestamps, features.timestamps) and loaded.timestamps.dtype == np.float64
    assert loaded.video == features.video  # rebuilt as a VideoInfo
    assert (loaded.model_id, loaded.revision, loaded.fps, loaded.max_frames) == (
        KEY.model_id,
        KEY.revision,
        KEY.fps,
        KEY.max_frames,
    )
    # float16 storage: within float16 rounding of the original unit vectors.
    torch.testing.assert_close(stored.embeddings, features.embeddings, atol=1e-3, rtol=0)


def test_float32_storage_is_exact(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, storage_dtype=torch.float32)
    features = make_features()
    cache.put(KEY, features)
    loaded = cache.get(KEY)
    assert loaded is not None and torch.equal(loaded.embeddings, features.embeddings)


def test_bfloat16_storage_round_trips(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, storage_dtype=torch.bfloat16)
    stored = cache.put(KEY, make_features())
    loaded = cache.get(KEY)
    assert loaded is not None and torch.equal(loaded.embeddings, stored.embeddings)
    assert torch.equal(stored.embeddings, make_features().embeddings.bfloat16().float())


def test_video_info_as_a_dict_round_trips(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    features = dataclasses.replace(make_features(), video={"path": "/v.mp4", "duration": 3.0})
    cache.put(KEY, features)
    loaded = cache.get(KEY)
    assert loaded is not None and loaded.video == {"path": "/v.mp4", "duration": 3.0}


@pytest.mark.parametrize(
    "change",
    [
        {"revision": "local-def"},
        {"model_id": "/models/other"},
        {"fps": 2.0},
        {"max_frames": 1024},
        {"fingerprint": "e" * 32},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_key_change_misses(tmp_path: Path, change: dict) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(KEY, make_features())
    other = dataclasses.replace(KEY, **change)
    assert cache.get(other) is None
    assert cache.get(KEY) is not None  # the original entry is untouched


def test_key_fields_are_canonical() -> None:
    assert CacheKey("f", "m", "r", 1, 10).digest == CacheKey("f", "m", "r", 1.0, 10).digest


def test_default_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSJOE_CACHE", str(tmp_path / "c"))
    assert FeatureCache().root == tmp_path / "c" == default_cache_dir()
    monkeypatch.delenv("MSJOE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "msjoe" / "features"


def test_put_rejects_inconsistent_features(tmp_path: Path) -> None:
    features = dataclasses.replace(make_features(), timestamps=np.zeros(3))
    with pytest.raises(ValueError, match="3 timestamps but 7 embeddings"):
        FeatureCache(tmp_path).put(KEY, features)


# --- corrupt and stale entries ---------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def _tiny(path: Path) -> None:
    path.write_bytes(b"\x01\x02")


def _flip_data_byte(path: Path) -> None:
    flip_byte(path, path.stat().st_size - 20)  # inside the tensor data: only the checksum can tell


def _rewrite_metadata(path: Path, **changes: str) -> None:
    """Rewrite the safetensors header's metadata in place (tensor data untouched)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def _wrong_shapes(path: Path) -> None:
    _rewrite_metadata(path, num_frames="8")


def _old_format(path: Path) -> None:
    _rewrite_metadata(path, format_version=str(FORMAT_VERSION - 1))


def _other_key(path: Path) -> None:
    _rewrite_metadata(
        path, key=json.dumps(dataclasses.asdict(dataclasses.replace(KEY, revision="old")), sort_keys=True)
    )


def _missing_tensor(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"embeddings": torch.zeros(7, 16)}, str(path), metadata={"format": "msjoe-frame-features"})


CORRUPTIONS = {
    "truncated": (_truncate, "truncated"),
    "garbage": (_garbage, "garbage|truncated"),
    "two bytes": (_tiny, "truncated"),
    "flipped data byte": (_flip_data_byte, "checksum"),
    "wrong shapes": (_wrong_shapes, "wrong shapes"),
    "old format version": (_old_format, "stale format version"),
    "written for another key": (_other_key, "another key.*revision"),
    "foreign safetensors": (_missing_tensor, "stale format version|bad metadata"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_unusable_entries_are_logged_removed_and_missed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    corrupt, reason = CORRUPTIONS[name]
    cache = FeatureCache(tmp_path)
    cache.put(KEY, make_features())
    path = cache.path(KEY)
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger="msjoe.cache"):
        assert cache.get(KEY) is None
    assert not path.exists()
    (record,) = [r for r in caplog.records if r.name == "msjoe.cache"]
    assert str(path) in record.getMessage()
    assert re.search(reason, record.getMessage()), record.getMessage()
    # ... and it can be rebuilt.
    cache.put(KEY, make_features())
    assert cache.get(KEY) is not None


# --- atomic and concurrent writes ------------------------------------------------------------------------------


@pytest.mark.parametrize("crash", [OSError("disk on fire"), KeyboardInterrupt()], ids=["OSError", "interrupt"])
def test_a_crash_during_put_leaves_no_entry_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: BaseException
) -> None:
    cache = FeatureCache(tmp_path)

    def crashing_replace(src: str, dst: str) -> None:
        assert Path(src).stat().st_size > 0  # the temp file was fully written when the "crash" hits
        raise crash

    monkeypatch.setattr(os, "replace", crashing_replace)
    expected = CacheError if isinstance(crash, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        cache.put(KEY, make_features())
    assert cache.get(KEY) is None
    assert visible_files(tmp_path) == []

    monkeypatch.undo()
    cache.put(KEY, make_features())
    assert cache.get(KEY) is not None


def test_a_crash_does_not_damage_the_previous_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path)
    first = cache.put(KEY, make_features(seed=0))
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(CacheError, match="cannot write"):
        cache.put(KEY, make_features(seed=1))
    monkeypatch.undo()
    loaded = cache.get(KEY)
    assert loaded is not None and torch.equal(loaded.embeddings, first.embeddings)


def test_leftover_temp_files_are_ignored_then_cleaned(tmp_path: Path) -> None:
    """A killed writer leaves its temp file behind: readers ignore it; old ones are deleted by later writes."""
    cache = FeatureCache(tmp_path)
    shard = cache.path(KEY).parent
    shard.mkdir(parents=True)
    old = shard / f".{cache.path(KEY).stem}.dead.tmp"
    old.write_bytes(b"half a file")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = shard / ".another-writer.live.tmp"  # possibly a write in progress elsewhere: must survive
    young.write_bytes(b"in progress")
    assert cache.get(KEY) is None
    cache.put(KEY, make_features())
    assert not old.exists() and young.exists()
    assert cache.clean(older_than_s=0.0) == 1 and not young.exists()


def test_concurrent_writers_and_readers_only_see_complete_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path)
    versions = [make_features(num_frames=200, dim=64, seed=seed) for seed in range(4)]
    stored = {seed: cache.put(KEY, f).embeddings for seed, f in enumerate(versions)}
    errors: list[BaseException] = []
    seen: list[int] = []

    def write(seed: int) -> None:
        try:
            for _ in range(15):
                cache.put(KEY, versions[seed])
        except BaseException as err:
            errors.append(err)

    def read() -> None:
        try:
            for _ in range(60):
                loaded = cache.get(KEY)
                assert loaded is not None
                seen.append(next(s for s, e in stored.items() if torch.equal(e, loaded.embeddings)))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(4)] + [threading.Thread(target=read)]
    with caplog.at_level(logging.WARNING, logger="msjoe.cache"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert not [r for r in caplog.records if r.name == "msjoe.cache"]  # no entry was ever seen corrupt
    assert len(seen) == 60
    assert [p.name for p in visible_files(tmp_path)] == [cache.path(KEY).name]


def test_an_unwritable_root_is_a_cache_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = FeatureCache(blocker / "cache")
    with pytest.raises(CacheError, match="a-file/cache"):
        cache.ensure_writable()
    with pytest.raises(CacheError, match="MSJOE_CACHE"):
        cache.put(KEY, make_features())
    assert cache.get(KEY) is None  # reading an absent entry of an unusable cache is just a miss
