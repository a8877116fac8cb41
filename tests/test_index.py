"""index_video / index_videos with a tiny CLIP and short synthetic videos: caching, rebuilds, batch robustness."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import msjoe.index
from msjoe.cache import FeatureCache
from msjoe.errors import CacheError
from msjoe.features import DualEncoder
from msjoe.index import IndexReport, index_video, index_videos
from msjoe.synthetic_video import write_video
from msjoe.video import VideoInfo, candidate_timestamps, decode_frames, probe

FPS = 2.0  # candidates per second: 8 for the 4 s test video


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every probe / iter_frames call made by msjoe.index (the real functions still run)."""
    calls: list[str] = []
    real_iter_frames, real_probe = msjoe.index.iter_frames_at_sizes, msjoe.index.probe

    def spy_iter_frames(path, *args, **kwargs):
        calls.append(f"iter_frames {Path(path).name}")
        return real_iter_frames(path, *args, **kwargs)

    def spy_probe(path):
        calls.append(f"probe {Path(path).name}")
        return real_probe(path)

    monkeypatch.setattr(msjoe.index, "iter_frames_at_sizes", spy_iter_frames)
    monkeypatch.setattr(msjoe.index, "probe", spy_probe)
    return calls


def small_video(path: Path, seconds: float = 3.0, seed_color: int = 0) -> Path:
    from msjoe.synthetic_video import Event, event_color

    return write_video(path, duration=seconds, fps=8, size=(96, 64), events=[Event(0.0, 1.0, event_color(seed_color))])


# --- index_video -----------------------------------------------------------------------------------------------


def test_features_are_the_encoder_applied_to_the_candidate_frames(short_video: Path, clip: DualEncoder) -> None:
    features = index_video(short_video, clip, fps=FPS)
    info = probe(short_video)
    expected_times = candidate_timestamps(info, fps=FPS)
    assert np.array_equal(features.timestamps, expected_times) and features.timestamps.dtype == np.float64
    frames = decode_frames(short_video, expected_times, size=clip.frame_size)
    torch.testing.assert_close(features.embeddings, clip.encode_images(frames), atol=1e-6, rtol=0)
    assert features.embeddings.shape == (len(expected_times), clip.embed_dim)
    assert features.video == info
    assert (features.model_id, features.revision, features.fps) == (clip.model_id, clip.revision, FPS)


def test_frames_are_decoded_at_the_model_resolution(
    short_video: Path, clip: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = []
    real = msjoe.index.iter_frames_at_sizes

    def spy(path, timestamps, decode_sizes, **kwargs):
        sizes.append(list(decode_sizes))
        for (batch,) in real(path, timestamps, decode_sizes, **kwargs):
            assert min(batch.shape[1:3]) == clip.image_size
            yield (batch,)

    monkeypatch.setattr(msjoe.index, "iter_frames_at_sizes", spy)
    index_video(short_video, clip, fps=FPS)
    assert sizes == [[clip.frame_size]]


def test_max_frames_caps_the_candidates(short_video: Path, clip: DualEncoder) -> None:
    features = index_video(short_video, clip, fps=4.0, max_frames=5)
    assert features.num_frames == 5
    assert np.all(np.diff(features.timestamps) > 0)


def test_encoding_streams_in_batches(short_video: Path, clip: DualEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_batches = []
    real = clip.encode_images

    def spy(frames, batch_size=64):
        seen_batches.append(len(frames))
        return real(frames, batch_size=batch_size)

    monkeypatch.setattr(clip, "encode_images", spy)
    progress = []
    features = index_video(short_video, clip, fps=FPS, batch_size=3, progress=lambda d, t: progress.append((d, t)))
    assert seen_batches == [3, 3, 2]  # never more than one batch of frames in memory
    assert progress == [(0, 8), (3, 8), (6, 8), (8, 8)]
    assert features.num_frames == 8


def test_second_call_decodes_nothing_and_returns_identical_features(
    short_video: Path, clip: DualEncoder, tmp_path: Path, decode_calls: list[str]
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    first = index_video(short_video, clip, cache, fps=FPS)
    assert decode_calls == ["probe short.mp4", "iter_frames short.mp4"]
    decode_calls.clear()
    second = index_video(short_video, clip, cache, fps=FPS)
    assert decode_calls == []
    assert torch.equal(first.embeddings, second.embeddings)
    assert np.array_equal(first.timestamps, second.timestamps)
    assert second.video == first.video and isinstance(second.video, VideoInfo)
    # The cached (float16) values stay close to a fresh float32 computation.
    torch.testing.assert_close(first.embeddings, index_video(short_video, clip, fps=FPS).embeddings, atol=2e-3, rtol=0)


def test_a_copy_at_another_path_hits_and_reports_its_own_path(
    short_video: Path, clip: DualEncoder, tmp_path: Path, decode_calls: list[str]
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    original = index_video(short_video, clip, cache, fps=FPS)
    copy = Path(shutil.copyfile(short_video, tmp_path / "renamed copy.mp4"))
    decode_calls.clear()
    copied = index_video(copy, clip, cache, fps=FPS)
    assert decode_calls == []
    assert torch.equal(copied.embeddings, original.embeddings)
    assert copied.video.path == str(copy)


def test_edited_video_and_other_sampling_miss(clip: DualEncoder, tmp_path: Path, decode_calls: list[str]) -> None:
    cache = FeatureCache(tmp_path / "cache")
    video = small_video(tmp_path / "v.mp4", seed_color=0)
    before = index_video(video, clip, cache, fps=FPS)
    small_video(video, seed_color=3)  # same path, same length, different picture
    decode_calls.clear()
    after = index_video(video, clip, cache, fps=FPS)
    assert decode_calls == ["probe v.mp4", "iter_frames v.mp4"]
    assert not torch.allclose(before.embeddings, after.embeddings)
    for sampling in ({"fps": 1.0}, {"fps": FPS, "max_frames": 4}):
        decode_calls.clear()
        index_video(video, clip, cache, **sampling)
        assert decode_calls == ["probe v.mp4", "iter_frames v.mp4"], sampling


def test_a_changed_checkpoint_misses(
    short_video: Path, tiny_clip_dir: Path, tmp_path: Path, decode_calls: list[str]
) -> None:
    model_dir = Path(shutil.copytree(tiny_clip_dir, tmp_path / "model"))
    cache = FeatureCache(tmp_path / "cache")
    index_video(short_video, DualEncoder.from_pretrained(str(model_dir)), cache, fps=FPS)
    config = model_dir / "config.json"
    config.write_text(config.read_text() + "\n")  # any rewrite of a checkpoint file
    decode_calls.clear()
    index_video(short_video, DualEncoder.from_pretrained(str(model_dir)), cache, fps=FPS)
    assert decode_calls == ["probe short.mp4", "iter_frames short.mp4"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_entry_is_rebuilt_with_a_warning(
    short_video: Path, clip: DualEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    original = index_video(short_video, clip, cache, fps=FPS)
    (entry,) = (tmp_path / "cache").rglob("*.safetensors")
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x93garbage" * 100)
    with caplog.at_level(logging.WARNING, logger="msjoe.cache"):
        rebuilt = index_video(short_video, clip, cache, fps=FPS)
    assert any(str(entry) in r.getMessage() for r in caplog.records)
    assert torch.equal(rebuilt.embeddings, original.embeddings)
    caplog.clear()
    assert torch.equal(index_video(short_video, clip, cache, fps=FPS).embeddings, original.embeddings)
    assert not caplog.records  # the rebuilt entry is healthy


def test_an_unwritable_cache_fails_before_decoding(
    short_video: Path, clip: DualEncoder, tmp_path: Path, decode_calls: list[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="file/cache"):
        index_video(short_video, clip, FeatureCache(blocker / "cache"), fps=FPS)
    assert decode_calls == []


def test_bad_sampling_arguments_are_named(short_video: Path, clip: DualEncoder, tmp_path: Path) -> None:
    for kwargs, name in [({"fps": 0}, "fps"), ({"max_frames": 0}, "max_frames"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ValueError, match=name):
            index_video(short_video, clip, FeatureCache(tmp_path), **kwargs)


# --- index_videos ----------------------------------------------------------------------------------------------


def test_index_videos_continues_past_bad_videos_and_resumes(
    clip: DualEncoder, tmp_path: Path, decode_calls: list[str]
) -> None:
    good_a = small_video(tmp_path / "a.mp4", seed_color=1)
    good_b = small_video(tmp_path / "b.mp4", seconds=2.0, seed_color=2)
    missing = tmp_path / "missing.mp4"
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    data = small_video(tmp_path / "full.mp4", seconds=3.0).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    paths = [good_a, missing, not_a_video, truncated, good_b]
    cache = FeatureCache(tmp_path / "cache")

    videos_done = []
    report = index_videos(paths, clip, cache, fps=FPS, progress=lambda d, t: videos_done.append((d, t)))
    assert isinstance(report, IndexReport)
    assert report.indexed == [str(good_a), str(good_b)]
    assert report.cached == []
    failed = {f.path: f.error_type for f in report.failed}
    assert failed[str(missing)] == "VideoNotFoundError"
    assert failed[str(not_a_video)] == "NotAVideoError"
    assert failed[str(truncated)] == "CorruptVideoError"
    assert all(f.message for f in report.failed)
    assert not report.ok and "FAILED" in report.summary() and str(missing) in report.summary()
    assert videos_done[-1] == (5, 5)

    # Rerun (e.g. after an interruption): the good videos are skipped without decoding.
    decode_calls.clear()
    again = index_videos(paths, clip, cache, fps=FPS)
    assert again.cached == [str(good_a), str(good_b)] and again.indexed == []
    assert len(again.failed) == 3
    assert not any(call.startswith("iter_frames") for call in decode_calls)
    for path in (good_a, good_b):
        assert index_video(path, clip, cache, fps=FPS).num_frames == len(candidate_timestamps(probe(path), FPS))


def test_index_videos_with_a_progress_bar(clip: DualEncoder, tmp_path: Path) -> None:
    video = small_video(tmp_path / "a.mp4", seconds=2.0)
    report = index_videos([video, video], clip, FeatureCache(tmp_path / "cache"), fps=FPS, progress=True)
    assert report.indexed == [str(video)] and report.cached == [str(video)]


def test_index_videos_stops_when_the_cache_is_unwritable(clip: DualEncoder, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError):
        index_videos([small_video(tmp_path / "a.mp4", seconds=1.0)], clip, FeatureCache(blocker / "c"), fps=FPS)
