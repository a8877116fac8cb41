"""Parallel indexing (worker processes decode segments, this process encodes): equal to sequential indexing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import msjoe.errors
import msjoe.index
from msjoe.cache import CacheKey, FeatureCache, fingerprint
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.index import index_video, index_videos, worker_segments
from msjoe.synthetic_video import read_frame_index, write_video
from msjoe.video import candidate_timestamps, probe

FPS = 2.0
BATCH = 8
STORE_PIXELS = 120 * 72


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s at 10 fps with a keyframe every 2 s: 80 candidates, 10 batches of 8, many GOPs per segment."""
    path = tmp_path_factory.mktemp("parallel") / "long.mp4"
    return write_video(path, duration=40.0, fps=10.0, size=(160, 96), gop=20)


def index_into(root: Path, paths: list[Path], clip: DualEncoder, workers: int) -> tuple[FeatureCache, FrameStore]:
    cache = FeatureCache(root)
    store = FrameStore.for_cache(cache, max_pixels=STORE_PIXELS)
    report = index_videos(paths, clip, cache, fps=FPS, batch_size=BATCH, frame_store=store, workers=workers)
    assert report.indexed == [str(p) for p in paths if p.exists()]
    return cache, store


def entry(cache: FeatureCache, clip: DualEncoder, video: Path):
    return cache.get(CacheKey(fingerprint(video), clip.model_id, clip.revision, FPS, msjoe.video.DEFAULT_MAX_FRAMES))


def jpeg_blob(store: FrameStore, video: Path) -> bytes:
    """The entry's JPEGs and index arrays: everything but the header (whose metadata holds the creation time)."""
    data = store.path(store.key(video, fps=FPS)).read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    return data[8 + header_length :]


def test_parallel_indexing_equals_sequential_indexing(long_video: Path, clip: DualEncoder, tmp_path: Path) -> None:
    sequential_cache, sequential_store = index_into(tmp_path / "sequential", [long_video], clip, workers=0)
    parallel_cache, parallel_store = index_into(tmp_path / "parallel", [long_video], clip, workers=3)
    sequential, parallel = entry(sequential_cache, clip, long_video), entry(parallel_cache, clip, long_video)
    assert np.array_equal(sequential.timestamps, parallel.timestamps) and len(parallel.timestamps) == 80
    assert torch.equal(sequential.embeddings, parallel.embeddings)  # same frames in the same encoder batches
    assert sequential.video == parallel.video
    assert jpeg_blob(sequential_store, long_video) == jpeg_blob(parallel_store, long_video)
    frames = parallel_store.read(long_video, parallel.timestamps, STORE_PIXELS, fps=FPS)
    assert [read_frame_index(f) for f in frames] == [int(t * 10.0) for t in parallel.timestamps]


def test_segments_are_runs_of_whole_batches_covering_every_candidate(
    long_video: Path, clip: DualEncoder, tmp_path: Path
) -> None:
    timestamps = candidate_timestamps(probe(long_video), FPS)
    store = FrameStore(tmp_path, max_pixels=STORE_PIXELS)
    for workers in (1, 3, 4, 20):
        segments = worker_segments(long_video, clip, workers=workers, fps=FPS, batch_size=BATCH, frame_store=store)
        assert len(segments) == min(workers, 10)
        assert all(len(s.timestamps) % BATCH == 0 for s in segments[:-1])
        assert [s.first_batch * BATCH for s in segments] == np.cumsum([0] + [len(s.timestamps) for s in segments])[
            :-1
        ].tolist()
        assert np.array_equal(np.concatenate([s.timestamps for s in segments]), timestamps)
        assert {(s.encoder_size, s.store_size) for s in segments} == {
            (clip.frame_size, store.frame_size(probe(long_video)))
        }
    # Decoding them as the workers do gives every candidate once (what bench/gpu_suite.py times).
    assert sum(msjoe.decode_worker.count_frames(s) for s in segments) == len(timestamps)
    with pytest.raises(ValueError, match="workers"):
        worker_segments(long_video, clip, workers=0)


def test_many_videos_with_a_bad_one(clip: DualEncoder, tmp_path: Path) -> None:
    videos = [write_video(tmp_path / f"v{i}.mp4", duration=3.0 + i, fps=8, size=(96, 64), gop=8) for i in range(3)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(videos[0].read_bytes()[: len(videos[0].read_bytes()) // 2])
    paths = [videos[0], broken, videos[1], tmp_path / "missing.mp4", videos[2]]
    cache = FeatureCache(tmp_path / "cache")
    done: list[tuple[int, int]] = []
    report = index_videos(paths, clip, cache, fps=FPS, batch_size=4, workers=2, progress=lambda *a: done.append(a))
    assert sorted(report.indexed) == sorted(str(v) for v in videos)
    assert {f.path: f.error_type for f in report.failed} == {
        str(broken): "CorruptVideoError",
        str(tmp_path / "missing.mp4"): "VideoNotFoundError",
    }
    assert done[-1] == (5, 5)
    for video in videos:
        expected = index_video(video, clip, fps=FPS, batch_size=4)  # sequential, no cache
        assert torch.equal(
            entry(cache, clip, video).embeddings, cache.put(expected_key(clip, video), expected).embeddings
        )
    again = index_videos(paths, clip, cache, fps=FPS, batch_size=4, workers=2)
    assert sorted(again.cached) == sorted(str(v) for v in videos) and again.indexed == []


def expected_key(clip: DualEncoder, video: Path) -> CacheKey:
    return CacheKey(fingerprint(video), clip.model_id, clip.revision, FPS, msjoe.video.DEFAULT_MAX_FRAMES)


def assert_like_sequential(
    cache: FeatureCache, clip: DualEncoder, video: Path, batch_size: int, store: FrameStore | None = None
) -> None:
    """``video``'s cache entry holds the embeddings sequential indexing gives (and its stored frames are the
    candidates', when ``store`` is given)."""
    expected = cache.put(expected_key(clip, video), index_video(video, clip, fps=FPS, batch_size=batch_size))
    assert torch.equal(entry(cache, clip, video).embeddings, expected.embeddings)
    if store is not None:
        times = candidate_timestamps(probe(video), FPS)
        assert [read_frame_index(f) for f in store.read(video, times, STORE_PIXELS, fps=FPS)] == [
            int(t * 8.0) for t in times
        ]


def test_a_store_missing_from_cached_features_is_built_by_the_workers(
    long_video: Path, clip: DualEncoder, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path)
    index_videos([long_video], clip, cache, fps=FPS, batch_size=BATCH)  # features only
    store = FrameStore.for_cache(cache, max_pixels=STORE_PIXELS)
    report = index_videos([long_video], clip, cache, fps=FPS, batch_size=BATCH, frame_store=store, workers=2)
    assert report.indexed == [str(long_video)]
    times = candidate_timestamps(probe(long_video), FPS)
    frames = store.read(long_video, times, STORE_PIXELS, fps=FPS)
    assert [read_frame_index(f) for f in frames] == [int(t * 10.0) for t in times]


def test_index_video_with_workers_returns_the_features_or_raises(
    long_video: Path, clip: DualEncoder, tmp_path: Path
) -> None:
    features = index_video(long_video, clip, fps=FPS, batch_size=BATCH, workers=2)
    torch.testing.assert_close(
        features.embeddings, index_video(long_video, clip, fps=FPS, batch_size=BATCH).embeddings, rtol=0, atol=0
    )
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    with pytest.raises(msjoe.errors.NotAVideoError):
        index_video(not_a_video, clip, fps=FPS, workers=2)


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_bad_worker_counts_are_rejected(long_video: Path, clip: DualEncoder, workers: object) -> None:
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        index_video(long_video, clip, workers=workers)


# --- msjoe index ---------------------------------------------------------------------------------------------------


def test_msjoe_index_takes_a_folder_and_workers(long_video: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from msjoe.cli import app

    folder = tmp_path / "videos"
    (folder / "nested").mkdir(parents=True)
    clips = [
        write_video(folder / "a.mp4", duration=3.0, fps=8, size=(96, 64)),
        write_video(folder / "nested" / "b.mkv", duration=2.0, fps=8, size=(96, 64)),
    ]
    (folder / "notes.txt").write_text("not a video, and not taken for one")
    runner = CliRunner()
    args = ["--clip", str(tiny_clip_dir), "--cache-dir", str(tmp_path / "cache"), "--fps", "2"]
    result = runner.invoke(app, ["index", str(folder), "--workers", "2", *args])
    assert result.exit_code == 0, result.output
    assert "2 indexed, 0 already cached, 0 failed" in result.output
    assert len(list((tmp_path / "cache" / "frames").rglob("*.safetensors"))) == 2  # frames stored by default
    again = runner.invoke(app, ["index", str(folder), str(clips[0]), "--workers", "0", *args])
    assert again.exit_code == 0 and "0 indexed, 3 already cached" in again.output

    no_store = runner.invoke(app, ["index", str(long_video), "--no-store-frames", *args])
    assert no_store.exit_code == 0 and len(list((tmp_path / "cache" / "frames").rglob("*.safetensors"))) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["index", str(empty), *args])
    assert result.exit_code == 1 and "holds no video files" in result.output


def test_workers_start_without_rerunning_the_parents_main_script(tmp_path: Path) -> None:
    """A spawned worker would import the parent's script (with its torch imports) before decoding anything."""
    import subprocess
    import sys

    marker = tmp_path / "imports.txt"
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import multiprocessing\n"
        "from msjoe.decode_worker import without_main_module\n"
        "if __name__ == '__main__':\n"
        "    context = multiprocessing.get_context('spawn')\n"
        "    with ProcessPoolExecutor(1, mp_context=context) as pool, without_main_module():\n"
        "        assert list(pool.map(abs, [-3])) == [3]\n"
        "    assert sys.modules['__main__'].__file__ == __file__  # restored\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
    assert marker.read_text().split() == ["__main__"]  # not also "__mp_main__" in the worker


def test_a_video_that_kills_its_worker_fails_alone(
    clip: DualEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _crashing_decode_worker

    monkeypatch.setattr(msjoe.decode_worker, "run", _crashing_decode_worker.run)
    good = [write_video(tmp_path / f"v{i}.mp4", duration=6.0 + i, fps=8, size=(96, 64), gop=8) for i in range(3)]
    crash = write_video(tmp_path / "crash.mp4", duration=9.0, fps=8, size=(96, 64), gop=8)
    # Probes fine, then fails in the worker: the header promises 8 s, the frames stop half-way.
    full = write_video(tmp_path / "full.mkv", duration=8.0, fps=8, size=(96, 64), gop=8)
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    # Damaged in the middle: decoding stops with an error part-way.
    garbled = tmp_path / "garbled.mp4"
    data = bytearray(write_video(tmp_path / "whole.mp4", duration=10.0, fps=8, size=(96, 64), gop=8).read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    garbled.write_bytes(bytes(data))
    paths = [good[0], crash, good[1], truncated, garbled, good[2]]
    cache = FeatureCache(tmp_path / "cache")
    store = FrameStore.for_cache(cache, max_pixels=STORE_PIXELS)

    report = index_videos(paths, clip, cache, fps=FPS, batch_size=4, frame_store=store, workers=2)

    failures = {f.path: f for f in report.failed}
    assert {path: f.error_type for path, f in failures.items()} == {
        str(crash): "DecoderCrashedError",
        str(truncated): "CorruptVideoError",
        str(garbled): "CorruptVideoError",
    }
    assert failures[str(crash)].message.startswith(f"{crash}: the process decoding it died (killed by SIGKILL)")
    assert "header says the video lasts 8.000 s" in failures[str(truncated)].message
    assert str(garbled) in failures[str(garbled)].message and "decoding failed" in failures[str(garbled)].message
    assert sorted(report.indexed) == sorted(str(v) for v in good)
    for video in good:  # decoded again from the start after the crash, yet equal to sequential indexing
        assert_like_sequential(cache, clip, video, 4, store)
    for bad in (crash, truncated, garbled):
        assert entry(cache, clip, bad) is None and not store.has(bad, fps=FPS)
    assert [p.name for p in store.root.rglob("*") if p.is_file() and not p.name.endswith(".safetensors")] == []
    with pytest.raises(msjoe.errors.DecoderCrashedError, match=r"crash\.mp4: the process decoding it died"):
        index_video(crash, clip, fps=FPS, batch_size=4, workers=2)


def test_a_worker_killed_between_videos_fails_nothing(
    clip: DualEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _dying_decode_worker

    # The worker that decodes the first segment of die-after.mp4 dies (SIGKILL) once it has sent it, idle, as the
    # out-of-memory killer may pick an idle worker; the other videos' segments are still to decode.
    monkeypatch.setattr(msjoe.decode_worker, "run", _dying_decode_worker.run_dying_once_when_idle)
    monkeypatch.setenv("MSJOE_TEST_DEATH_MARKER", str(tmp_path / "died"))
    rounds: list[int] = []
    run_round = msjoe.index._Indexer._run_round

    def counted_round(indexer: msjoe.index._Indexer, states: list, workers: int) -> object:
        rounds.append(len(states))
        return run_round(indexer, states, workers)

    monkeypatch.setattr(msjoe.index._Indexer, "_run_round", counted_round)
    names = ["die-after", "v1", "v2", "v3"]
    videos = [
        write_video(tmp_path / f"{name}.mp4", duration=6.0 + i, fps=8, size=(96, 64), gop=8)
        for i, name in enumerate(names)
    ]

    cache, store = index_into(tmp_path / "cache", videos, clip, workers=2)  # asserts every video indexed

    assert (tmp_path / "died").exists()
    assert len(rounds) == 2 and rounds[0] == 4  # the unfinished videos were decoded again by new workers
    for video in videos:  # equal to sequential indexing, as stored by the cache
        assert_like_sequential(cache, clip, video, BATCH, store)


def test_workers_dying_again_and_again_stop_the_indexing(
    clip: DualEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _dying_decode_worker

    videos = [write_video(tmp_path / f"v{i}.mp4", duration=6.0 + i, fps=8, size=(96, 64), gop=8) for i in range(2)]
    cache, store = index_into(tmp_path / "cache", videos[:1], clip, workers=2)
    monkeypatch.setattr(msjoe.decode_worker, "run", _dying_decode_worker.run_dying_at_once)

    with pytest.raises(msjoe.errors.DecodingWorkersDiedError) as raised:
        index_videos(videos, clip, cache, fps=FPS, batch_size=BATCH, frame_store=store, workers=2)

    message = str(raised.value)
    assert f"died {msjoe.index.MAX_DEATHS_WITHOUT_PROGRESS} times in a row with no progress" in message
    assert "killed by SIGKILL between videos" in message and "fewer --workers" in message
    assert entry(cache, clip, videos[0]) is not None and store.has(videos[0], fps=FPS)  # finished work stays
    assert entry(cache, clip, videos[1]) is None and not store.has(videos[1], fps=FPS)
    monkeypatch.undo()
    report = index_videos(videos, clip, cache, fps=FPS, batch_size=BATCH, frame_store=store, workers=2)
    assert (report.cached, report.indexed, report.failed) == ([str(videos[0])], [str(videos[1])], [])  # resumes
    assert_like_sequential(cache, clip, videos[1], BATCH)


def test_a_worker_killed_while_writing_a_message_fails_its_video_alone(
    clip: DualEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _dying_decode_worker

    # The dead worker leaves half a message in the result pipe and its write lock taken: reading it here would
    # wait forever for the rest; the reading thread does instead, and the dead worker is noticed.
    monkeypatch.setattr(msjoe.decode_worker, "run", _dying_decode_worker.run_dying_mid_message)
    good = [write_video(tmp_path / f"v{i}.mp4", duration=6.0 + i, fps=8, size=(96, 64), gop=8) for i in range(2)]
    cut = write_video(tmp_path / "cut.mp4", duration=9.0, fps=8, size=(96, 64), gop=8)
    cache = FeatureCache(tmp_path / "cache")

    # First, so that nothing else arrives before the cut message: this process is waiting for it, and reads it.
    report = index_videos([cut, *good], clip, cache, fps=FPS, batch_size=BATCH, workers=2)

    assert [(f.path, f.error_type) for f in report.failed] == [(str(cut), "DecoderCrashedError")]
    assert sorted(report.indexed) == sorted(str(v) for v in good)
    for video in good:
        assert_like_sequential(cache, clip, video, BATCH)
