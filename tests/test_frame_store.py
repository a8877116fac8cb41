"""FrameStore: stored candidate frames are the right frames at the decode path's sizes; misses, damaged entries,
atomic writes, and the index_video / index_videos hooks (built once, never rebuilt while usable)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import msjoe.frame_store
import msjoe.index
from msjoe.cache import FeatureCache, fingerprint
from msjoe.errors import CacheError, CorruptVideoError
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore, budget_frame_size
from msjoe.index import index_video, index_videos
from msjoe.pipeline import load_frames
from msjoe.synthetic_video import read_frame_index, write_video
from msjoe.video import candidate_timestamps, probe

VIDEO_FPS = 10.0
FPS = 2.0  # candidates per second: 8 for the 4 s test video
NATIVE_W, NATIVE_H = 160, 96
STORE_PIXELS = 120 * 72  # below the native 160x96: stored frames are 120x72, downscaled like the decode path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s at 10 fps, 160x96; every frame carries its index as a barcode. Do not modify it."""
    folder = tmp_path_factory.mktemp("frame-store-videos")
    return write_video(folder / "barcodes.mp4", duration=4.0, fps=VIDEO_FPS, size=(NATIVE_W, NATIVE_H))


@pytest.fixture(scope="module")
def candidates(video: Path) -> np.ndarray:
    return candidate_timestamps(probe(video), fps=FPS)


@pytest.fixture
def store(tmp_path: Path, video: Path) -> FrameStore:
    """A store holding ``video``'s candidates at STORE_PIXELS."""
    frame_store = FrameStore(tmp_path / "frames", max_pixels=STORE_PIXELS)
    frame_store.build(video, fps=FPS)
    return frame_store


def entry_path(store: FrameStore, video: Path) -> Path:
    return store.path(store.key(video, fps=FPS))


def visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


# --- round trip --------------------------------------------------------------------------------------------------


def test_read_returns_the_candidate_frames_at_the_stored_size(
    store: FrameStore, video: Path, candidates: np.ndarray
) -> None:
    frames = store.read(video, candidates, STORE_PIXELS, fps=FPS)
    decoded = load_frames(video, candidates, STORE_PIXELS)  # the decode path
    assert frames is not None and frames.dtype == np.uint8 and frames.flags.writeable
    assert frames.shape == decoded.shape == (len(candidates), 72, 120, 3)
    # The frame displayed at t is frame floor(t * fps): the barcode survives JPEG and names it.
    expected = [int(t * VIDEO_FPS) for t in candidates]
    assert [read_frame_index(f) for f in frames] == expected == [read_frame_index(f) for f in decoded]
    assert mean_abs_diff(frames, decoded) < 3.0  # JPEG at quality 90 is lossy, but close


def test_frames_come_in_the_callers_order_with_duplicates(
    store: FrameStore, video: Path, candidates: np.ndarray
) -> None:
    order = [5, 0, 5, 7, 2]
    frames = store.read(video, candidates[order], STORE_PIXELS, fps=FPS)
    assert frames is not None
    assert [read_frame_index(f) for f in frames] == [int(candidates[i] * VIDEO_FPS) for i in order]
    np.testing.assert_array_equal(frames[0], frames[2])


def test_empty_request_gives_an_empty_batch_of_the_right_size(store: FrameStore, video: Path) -> None:
    frames = store.read(video, [], STORE_PIXELS, fps=FPS)
    assert frames is not None and frames.shape == (0, 72, 120, 3)


@pytest.mark.parametrize("budget", [STORE_PIXELS - 1, 100 * 60, 80 * 48, 64 * 40, 30 * 18])
def test_smaller_budgets_give_the_decode_paths_size(
    store: FrameStore, video: Path, candidates: np.ndarray, budget: int
) -> None:
    frames = store.read(video, candidates, budget, fps=FPS)
    decoded = load_frames(video, candidates, budget)  # the decode path
    assert frames is not None and frames.shape == decoded.shape
    assert frames.shape[1] * frames.shape[2] <= budget
    assert mean_abs_diff(frames, decoded) < 6.0  # two resampling steps + JPEG vs one area scaling
    if frames.shape[2] >= 64:  # the barcode needs a few pixels a bit
        assert [read_frame_index(f) for f in frames] == [int(t * VIDEO_FPS) for t in candidates]


def test_budget_frame_size_keeps_fitting_frames_and_shrinks_the_others_evenly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(2, 2000, size=2))
        budget = int(rng.integers(4, 4_000_000))
        h, w = budget_frame_size(height, width, budget)
        if height * width <= budget:
            assert (h, w) == (height, width)
        else:
            assert h * w <= budget and h % 2 == 0 and w % 2 == 0 and h <= height and w <= width
            if min(h, w) >= 20:  # aspect kept up to rounding to even sides
                assert abs(h / w - height / width) <= 0.1 * height / width + 2 / w


def test_a_native_size_entry_serves_any_larger_budget(tmp_path: Path, video: Path, candidates: np.ndarray) -> None:
    store = FrameStore(tmp_path, max_pixels=NATIVE_W * NATIVE_H)  # the video fits: stored at native size
    store.build(video, fps=FPS)
    frames = store.read(video, candidates, 10**7, fps=FPS)
    assert frames is not None and frames.shape == (len(candidates), NATIVE_H, NATIVE_W, 3)
    assert [read_frame_index(f) for f in frames] == [int(t * VIDEO_FPS) for t in candidates]


def test_the_entry_is_a_plain_safetensors_file(store: FrameStore, video: Path, candidates: np.ndarray) -> None:
    tensors = load_file(str(entry_path(store, video)))
    assert sorted(tensors) == ["crc32", "jpeg", "offsets", "timestamps"]
    np.testing.assert_array_equal(tensors["timestamps"], candidates)
    offsets = tensors["offsets"]
    assert offsets[0] == 0 and offsets[-1] == len(tensors["jpeg"]) and len(offsets) == len(candidates) + 1
    first = tensors["jpeg"][offsets[0] : offsets[1]].tobytes()
    assert first[:2] == b"\xff\xd8" and first[-2:] == b"\xff\xd9"  # a complete JPEG


def test_entries_are_found_by_content_not_path(tmp_path: Path, store: FrameStore, video: Path) -> None:
    copy = shutil.copy(video, tmp_path / "renamed.mp4")
    assert store.has(copy, fps=FPS)
    fp = fingerprint(video)
    # A known fingerprint needs no file at all.
    assert store.read(tmp_path / "gone.mp4", [0.25], STORE_PIXELS, fps=FPS, fingerprint=fp) is not None


def test_for_cache_and_default_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert FrameStore.for_cache(FeatureCache(tmp_path / "c")).root == tmp_path / "c" / "frames"
    monkeypatch.setenv("MSJOE_CACHE", str(tmp_path / "env"))
    assert FrameStore().root == tmp_path / "env" / "frames"


# --- misses ------------------------------------------------------------------------------------------------------


def test_misses(store: FrameStore, video: Path, candidates: np.ndarray, tmp_path: Path) -> None:
    assert FrameStore(tmp_path / "empty").read(video, candidates, STORE_PIXELS, fps=FPS) is None  # absent
    assert store.read(video, candidates, STORE_PIXELS) is None  # another candidate grid (1 fps)
    assert store.read(video, candidates + 0.1, STORE_PIXELS, fps=FPS) is None  # not candidates
    assert store.read(video, [candidates[0], 3.3], STORE_PIXELS, fps=FPS) is None  # one of them is not
    assert store.read(video, candidates, STORE_PIXELS + 2000, fps=FPS) is None  # larger than stored
    assert store.read(video, candidates, 10**7, fps=FPS) is None  # native size: larger than stored
    # Float noise is not a miss.
    assert store.read(video, candidates + 1e-9, STORE_PIXELS, fps=FPS) is not None
    assert entry_path(store, video).exists()  # misses do not touch a good entry


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, v: s.read(v, [[0.25]], STORE_PIXELS, fps=FPS), "timestamps"),
        (lambda s, v: s.read(v, [float("nan")], STORE_PIXELS, fps=FPS), "timestamps"),
        (lambda s, v: s.read(v, [0.25], 0, fps=FPS), "max_pixels"),
        (lambda s, v: s.read(v, [0.25], STORE_PIXELS, fps=0), "fps"),
        (lambda s, v: s.has(v, max_frames=0), "max_frames"),
        (lambda s, v: FrameStore(quality=0), "quality"),
        (lambda s, v: FrameStore(max_pixels=2.5), "max_pixels"),
    ],
)
def test_bad_arguments_name_the_argument(store: FrameStore, video: Path, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(store, video)


# --- damaged entries ---------------------------------------------------------------------------------------------


def _truncate(path: Path, video: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _append(path: Path, video: Path) -> None:
    with open(path, "ab") as file:
        file.write(b"extra")


def _garbage(path: Path, video: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _huge_header_length(path: Path, video: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])


def _flip_index_byte(path: Path, video: Path) -> None:
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    data[8 + header_length + 12] ^= 0xFF  # inside the offsets array
    path.write_bytes(bytes(data))


def _other_key(path: Path, video: Path) -> None:
    """The entry of another store configuration (quality 50) put at this key's path."""
    other = FrameStore(path.parent.parent.parent / "other", max_pixels=STORE_PIXELS, quality=50)
    other.build(video, fps=FPS)
    shutil.copy(other.path(other.key(video, fps=FPS)), path)


HEADER_DAMAGE = {
    "truncated": (_truncate, "length mismatch"),
    "extended": (_append, "length mismatch"),
    "garbage": (_garbage, "garbage header|truncated"),
    "huge header length": (_huge_header_length, "garbage header"),
    "flipped index byte": (_flip_index_byte, "index checksum"),
    "written for another key": (_other_key, "another key.*quality"),
}


@pytest.mark.parametrize("name", list(HEADER_DAMAGE))
@pytest.mark.parametrize("method", ["has", "read"])
def test_damaged_entries_are_logged_removed_and_missed(
    store: FrameStore,
    video: Path,
    candidates: np.ndarray,
    caplog: pytest.LogCaptureFixture,
    name: str,
    method: str,
) -> None:
    damage, reason = HEADER_DAMAGE[name]
    path = entry_path(store, video)
    damage(path, video)
    with caplog.at_level(logging.WARNING, logger="msjoe.frame_store"):
        if method == "has":
            assert not store.has(video, fps=FPS)
        else:
            assert store.read(video, candidates, STORE_PIXELS, fps=FPS) is None
    assert not path.exists()
    (record,) = [r for r in caplog.records if r.name == "msjoe.frame_store"]
    assert str(path) in record.getMessage()
    assert re.search(reason, record.getMessage()), record.getMessage()
    store.build(video, fps=FPS)  # ... and it can be rebuilt
    assert store.read(video, candidates, STORE_PIXELS, fps=FPS) is not None


def test_a_damaged_jpeg_is_caught_when_read(
    store: FrameStore, video: Path, candidates: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    path = entry_path(store, video)
    tensors = load_file(str(path))
    offsets = tensors["offsets"]
    data = bytearray(path.read_bytes())
    jpeg_start = len(data) - len(tensors["jpeg"])
    data[jpeg_start + int(offsets[3]) + 400] ^= 0x55  # inside frame 3's JPEG
    path.write_bytes(bytes(data))
    # Cheap checks pass (only the header and index are verified), and frames that are intact still read.
    assert store.has(video, fps=FPS)
    assert store.read(video, candidates[:3], STORE_PIXELS, fps=FPS) is not None
    with caplog.at_level(logging.WARNING, logger="msjoe.frame_store"):
        assert store.read(video, candidates[2:5], STORE_PIXELS, fps=FPS) is None
    assert "checksum mismatch in frame 3" in caplog.text
    assert not path.exists()


def test_an_older_format_version_is_stale(
    store: FrameStore, video: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(msjoe.frame_store, "FORMAT_VERSION", msjoe.frame_store.FORMAT_VERSION + 1)
    with caplog.at_level(logging.WARNING, logger="msjoe.frame_store"):
        assert not store.has(video, fps=FPS)
    assert "stale format version" in caplog.text
    assert not entry_path(store, video).exists()


# --- atomic writes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crash", [OSError("disk on fire"), KeyboardInterrupt()], ids=["OSError", "interrupt"])
def test_a_crash_at_the_rename_leaves_no_entry_and_no_temp_file(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch, crash: BaseException
) -> None:
    store = FrameStore(tmp_path, max_pixels=STORE_PIXELS)
    replaced: list[int] = []

    def crashing_replace(src: str, dst: str) -> None:
        replaced.append(Path(src).stat().st_size)  # the temp file was complete when the "crash" hits
        raise crash

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(CacheError if isinstance(crash, OSError) else KeyboardInterrupt):
        store.build(video, fps=FPS)
    assert replaced and replaced[0] > 0
    monkeypatch.undo()
    assert not store.has(video, fps=FPS)
    assert visible_files(tmp_path) == []


def test_a_decoding_error_mid_build_propagates_and_keeps_the_previous_entry(
    store: FrameStore, video: Path, candidates: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.read(video, candidates, STORE_PIXELS, fps=FPS)
    real_iter_frames = msjoe.frame_store.iter_frames

    def failing_iter_frames(*args, **kwargs):
        for i, batch in enumerate(real_iter_frames(*args, **{**kwargs, "batch_size": 2})):
            if i == 2:
                raise CorruptVideoError("damaged data half-way")
            yield batch

    monkeypatch.setattr(msjoe.frame_store, "iter_frames", failing_iter_frames)
    with pytest.raises(CorruptVideoError, match="half-way"):  # a video error, not reported as a cache error
        store.build(video, fps=FPS)
    monkeypatch.undo()
    assert visible_files(store.root) == [entry_path(store, video)]
    after = store.read(video, candidates, STORE_PIXELS, fps=FPS)
    assert before is not None and after is not None
    np.testing.assert_array_equal(before, after)


def test_old_leftover_temp_files_are_cleaned(store: FrameStore, video: Path) -> None:
    shard = entry_path(store, video).parent
    old, young = shard / ".dead.x.tmp", shard / ".live.y.tmp"
    old.write_bytes(b"half an entry")
    young.write_bytes(b"a write in progress")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.clean() == 1 and not old.exists() and young.exists()


def test_build_streams_in_bounded_batches(tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory holds one decoded batch, not the whole video: frames are consumed batch by batch while writing."""
    batch_sizes: list[int] = []
    real_iter_frames = msjoe.frame_store.iter_frames

    def spy(*args, **kwargs):
        batch_sizes.append(kwargs["batch_size"])
        return real_iter_frames(*args, **kwargs)

    monkeypatch.setattr(msjoe.frame_store, "iter_frames", spy)
    FrameStore(tmp_path).build(video, fps=FPS)
    assert batch_sizes == [msjoe.frame_store._BUILD_BATCH] and batch_sizes[0] < 100


# --- index hooks -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each decoding pass of indexing and what it made (the real function still runs)."""
    calls: list[str] = []
    real_iter_frames = msjoe.index.iter_frames_at_sizes

    def spy_iter_frames(path, timestamps, sizes, **kwargs):
        made = "features+frames" if len(sizes) == 2 else "frames" if sizes[0] == (72, 120) else "features"
        calls.append(f"{made} {Path(path).name}")
        return real_iter_frames(path, timestamps, sizes, **kwargs)

    monkeypatch.setattr(msjoe.index, "iter_frames_at_sizes", spy_iter_frames)
    return calls


def test_index_video_builds_the_store_once(
    tmp_path: Path, video: Path, candidates: np.ndarray, clip: DualEncoder, builds: list[str]
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    store = FrameStore.for_cache(cache, max_pixels=STORE_PIXELS)
    index_video(video, clip, cache, fps=FPS, frame_store=store)
    assert builds == ["features+frames barcodes.mp4"]  # one decoding pass for both
    frames = store.read(video, candidates, STORE_PIXELS, fps=FPS)
    assert frames is not None and [read_frame_index(f) for f in frames] == [int(t * VIDEO_FPS) for t in candidates]

    index_video(video, clip, cache, fps=FPS, frame_store=store)
    assert len(builds) == 1  # nothing decoded again

    store.remove(store.key(video, fps=FPS))  # features cached, frames missing: only the frames are rebuilt
    index_video(video, clip, cache, fps=FPS, frame_store=store)
    assert builds[1:] == ["frames barcodes.mp4"]


def test_index_video_without_a_cache_still_fills_the_store(
    tmp_path: Path, video: Path, clip: DualEncoder, builds: list[str]
) -> None:
    store = FrameStore(tmp_path, max_pixels=STORE_PIXELS)
    index_video(video, clip, fps=FPS, frame_store=store)
    index_video(video, clip, fps=FPS, frame_store=store)
    assert builds == ["features+frames barcodes.mp4", "features barcodes.mp4"] and store.has(video, fps=FPS)


def test_index_videos_reports_frame_only_work_as_indexed(
    tmp_path: Path, video: Path, clip: DualEncoder, builds: list[str]
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    store = FrameStore.for_cache(cache, max_pixels=STORE_PIXELS)
    missing = tmp_path / "missing.mp4"
    first = index_videos([video, missing], clip, cache, fps=FPS, frame_store=store)
    assert first.indexed == [str(video)] and [f.path for f in first.failed] == [str(missing)]
    second = index_videos([video], clip, cache, fps=FPS, frame_store=store)
    assert second.cached == [str(video)] and second.indexed == []
    store.remove(store.key(video, fps=FPS))
    third = index_videos([video], clip, cache, fps=FPS, frame_store=store)
    assert third.indexed == [str(video)]
    assert builds == ["features+frames barcodes.mp4", "frames barcodes.mp4"]
