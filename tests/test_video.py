"""Tests of msjoe.video: probing, candidate timestamps, exact seek-aware decoding and bad-input errors.

Every video here is a few seconds at 128x72, rendered by msjoe.synthetic_video, so each decoded frame can be
identified exactly by its barcode (read_frame_index). "Expected" frames come from the frame times the test
wrote, never from the code under test.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from msjoe import video
from msjoe.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NotAVideoError,
    NoVideoStreamError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
)
from msjoe.synthetic_video import read_frame_index, render_frame, write_video
from msjoe.video import VideoInfo, candidate_timestamps, decode_frames, iter_frames, probe

WIDTH, HEIGHT = 128, 72
FPS = 25
SECONDS = 4
NUM_FRAMES = FPS * SECONDS
GOP = 25  # a keyframe every second, so sparse targets make the reader seek

# (id, codec, file extension, extra encoder options)
CODECS = [
    ("h264-mp4", "libx264", "mp4", None),
    ("h264-bframes-mp4", "libx264", "mp4", {"preset": "medium"}),  # B-frames: decode order != display order
    ("h264-mkv", "libx264", "mkv", None),
    ("h264-ts", "libx264", "ts", None),  # MPEG-TS: no seek index at all
    ("hevc-mp4", "libx265", "mp4", None),
    ("vp9-webm", "libvpx-vp9", "webm", None),
    ("av1-mp4", "libsvtav1", "mp4", None),
    ("mpeg4-avi", "mpeg4", "avi", None),
]
CODEC_NAMES = {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9", "libsvtav1": "av1", "mpeg4": "mpeg4"}

SPARSE = [0.0, 0.5, 1.33, 2.02, 3.7, 3.99, 10.0]  # 10.0 is past the end: the last frame
DENSE = [i / FPS for i in range(0, NUM_FRAMES, 2)] + [(i + 0.5) / FPS for i in range(1, NUM_FRAMES, 3)]
SIZES = [None, 48, (60, 100)]
EXPECTED_HW = {None: (HEIGHT, WIDTH), 48: (48, 86), (60, 100): (60, 100)}  # 48 * 128 / 72 = 85.3 -> even 86


def displayed_index(frame_times: list[float], t: float) -> int:
    """Index of the frame displayed at t: the last one starting at or before t (the first if none does)."""
    starts = np.asarray(frame_times) - frame_times[0]
    return max(int(np.searchsorted(starts, t + 1e-9, side="right")) - 1, 0)


def barcodes(frames: np.ndarray) -> list[int]:
    return [read_frame_index(frame) for frame in frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    paths = {}
    for name, codec, ext, options in CODECS:
        paths[name] = write_video(
            folder / f"{name}.{ext}", duration=SECONDS, fps=FPS, size=(WIDTH, HEIGHT), codec=codec, gop=GOP,
            options=options,
        )  # fmt: skip
    return paths


# --- decoding: exact frame identity ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("targets", [SPARSE, DENSE], ids=["sparse", "dense"])
@pytest.mark.parametrize("name", [c[0] for c in CODECS])
def test_decoded_frames_are_exactly_the_displayed_ones(videos, name, targets, size):
    frames = decode_frames(videos[name], targets, size)
    times = [i / FPS for i in range(NUM_FRAMES)]
    assert frames.dtype == np.uint8
    assert frames.shape == (len(targets), *EXPECTED_HW[size], 3)
    assert barcodes(frames) == [displayed_index(times, t) for t in targets]


@pytest.mark.parametrize("name", [c[0] for c in CODECS])
def test_random_targets_in_random_order_match_a_full_decode(videos, name):
    """Against brute force: decode every frame with plain PyAV and look the displayed one up by its time."""
    with av.open(str(videos[name])) as container:
        decoded = [(float(f.time), read_frame_index(f.to_ndarray(format="rgb24"))) for f in container.decode(video=0)]
    times = [t for t, _ in decoded]
    rng = np.random.default_rng(len(name))
    targets = np.concatenate([rng.uniform(0, SECONDS + 0.5, 40), rng.integers(0, NUM_FRAMES, 10) / FPS])
    rng.shuffle(targets)
    expected = [decoded[displayed_index(times, t)][1] for t in targets]
    batches = iter_frames(videos[name], targets, 36, batch_size=7)
    assert barcodes(np.concatenate(list(batches))) == expected


@pytest.mark.parametrize("name", [c[0] for c in CODECS])
def test_probe_reads_the_header(videos, name):
    codec = next(c[1] for c in CODECS if c[0] == name)
    info = probe(videos[name])
    assert info == VideoInfo(
        path=str(videos[name]), duration=pytest.approx(SECONDS, abs=1e-3), fps=pytest.approx(FPS),
        num_frames=NUM_FRAMES, codec=CODEC_NAMES[codec], width=WIDTH, height=HEIGHT, rotation=0, start_time=0.0,
    )  # fmt: skip


def test_a_header_without_duration_is_measured_from_the_packets(videos, monkeypatch):
    monkeypatch.setattr(video, "_declared_duration", lambda *args: (None, False))
    info = probe(videos["h264-mkv"])
    assert info.duration == pytest.approx(SECONDS, abs=1e-3)
    assert info.num_frames == NUM_FRAMES


def test_a_stream_without_timestamps_is_refused_clearly(videos, tmp_path):
    path = tmp_path / "raw.h264"
    with av.open(str(videos["h264-mp4"])) as src, av.open(str(path), mode="w", format="h264") as dst:
        out_stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = out_stream
                dst.mux(packet)
    with pytest.raises(CorruptVideoError, match="no timestamps"):
        probe(path)


def test_colours_survive_decoding_and_scaling(videos):
    """Limited-range YUV must come back as full-range RGB close to what was rendered."""
    frames = decode_frames(videos["h264-mp4"], [0.0, 2.0])
    for frame, index in zip(frames, [0, 50], strict=True):
        rendered = render_frame(index, index / FPS, WIDTH, HEIGHT).astype(np.float64)
        assert np.abs(frame.astype(np.float64) - rendered).mean() < 4.0
    small = decode_frames(videos["h264-mp4"], [2.0], size=(36, 64))[0].astype(np.float64)
    expected = render_frame(50, 2.0, WIDTH, HEIGHT).astype(np.float64).reshape(36, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(small - expected).mean() < 6.0


def test_unsorted_and_duplicate_timestamps_come_back_in_the_callers_order(videos):
    targets = [3.5, 0.1, 3.5, 2.0, 0.1, 0.0, 3.96, 1.0]
    times = [i / FPS for i in range(NUM_FRAMES)]
    expected = [displayed_index(times, t) for t in targets]
    assert barcodes(decode_frames(videos["h264-bframes-mp4"], targets, 32)) == expected
    batches = list(iter_frames(videos["h264-bframes-mp4"], targets, 32, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 2]
    assert barcodes(np.concatenate(batches)) == expected


def test_iter_frames_batches_in_order_and_matches_decode_frames(videos):
    targets = np.linspace(0.0, SECONDS, 23)
    batches = list(iter_frames(videos["vp9-webm"], targets, 40, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(batches), decode_frames(videos["vp9-webm"], targets, 40))


def test_no_timestamps(videos):
    assert list(iter_frames(videos["h264-mp4"], [])) == []
    assert decode_frames(videos["h264-mp4"], [], size=48).shape == (0, 48, 86, 3)
    assert decode_frames(videos["h264-mp4"], np.array([])).shape == (0, HEIGHT, WIDTH, 3)


class _DecodeCounter:
    """Counts frames leaving the decoder and seeks, by wrapping the reader's internals."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.frames = 0
        self.seeks = 0
        decode_run, restart = video._FrameReader._decode_run, video._FrameReader._restart

        def counting_run(reader):
            for frame in decode_run(reader):
                self.frames += 1
                yield frame

        def counting_restart(reader, *args, **kwargs):
            self.seeks += 1
            return restart(reader, *args, **kwargs)

        monkeypatch.setattr(video._FrameReader, "_decode_run", counting_run)
        monkeypatch.setattr(video._FrameReader, "_restart", counting_restart)


@pytest.fixture(scope="module")
def long_gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s with a keyframe every 2 s: enough room to tell seeking from decoding through."""
    return write_video(tmp_path_factory.mktemp("gop") / "gop.mp4", duration=20, fps=FPS, size=(64, 36), gop=50)


def test_sparse_targets_seek_instead_of_decoding_everything(long_gop_video, monkeypatch):
    counter = _DecodeCounter(monkeypatch)
    targets = [1.0, 9.3, 18.9]
    frames = decode_frames(long_gop_video, targets)
    assert barcodes(frames) == [25, 232, 472]
    # Each target costs the frames from its keyframe (0, 200, 450) to it, plus the one after it (which shows
    # that the target's frame is the last one at or before the target); the first target needs no seek.
    assert counter.seeks == 2
    assert counter.frames == (25 - 0 + 2) + (232 - 200 + 2) + (472 - 450 + 2)


def test_dense_targets_decode_each_frame_at_most_once(long_gop_video, monkeypatch):
    counter = _DecodeCounter(monkeypatch)
    targets = np.arange(0.0, 20.0, 0.16)  # every 4th frame: closer than the keyframe interval
    frames = decode_frames(long_gop_video, targets)
    assert barcodes(frames) == [round(t * FPS) for t in targets]
    assert counter.frames <= 500  # one sweep, the GOP tails after the last target of a GOP skipped or not


def test_without_a_seek_index_sparse_targets_still_seek(tmp_path, monkeypatch):
    """MPEG-TS has no index: the reader learns the keyframe interval while decoding and seeks past it."""
    path = write_video(tmp_path / "gop.ts", duration=20, fps=FPS, size=(64, 36), gop=50)
    counter = _DecodeCounter(monkeypatch)
    targets = [0.5, 2.5, 9.3, 18.9, 4.0]
    assert barcodes(decode_frames(path, targets)) == [12, 62, 232, 472, 100]
    assert counter.seeks >= 2
    assert counter.frames < 300  # of 500


def test_going_backwards_seeks_back(long_gop_video):
    targets = [19.0, 3.0, 18.0, 0.0]
    assert barcodes(decode_frames(long_gop_video, targets)) == [475, 75, 450, 0]


# --- variable frame rate, rotation, start offset, pixel aspect -------------------------------------------------


def test_variable_frame_rate(tmp_path):
    frame_times = [0.0, 0.1, 0.15, 0.5, 0.52, 1.3, 2.0, 2.01, 2.4]
    path = write_video(tmp_path / "vfr.mp4", duration=0, size=(WIDTH, HEIGHT), frame_times=frame_times, gop=4)
    info = probe(path)
    assert info.num_frames == len(frame_times)
    assert info.duration == pytest.approx(2.4 + 1 / FPS, abs=1e-3)  # the muxer gives the last frame 1/fps
    targets = [0.0, 0.09, 0.1, 0.14, 0.16, 0.51, 0.6, 1.29, 1.31, 2.005, 2.02, 2.3, 2.5, 9.0]
    expected = [displayed_index(frame_times, t) for t in targets]
    for order in (targets, targets[::-1]):
        assert barcodes(decode_frames(path, order, 48)) == [expected[targets.index(t)] for t in order]


def write_rotated_video(path: Path, ccw_degrees: int, num_frames: int = 30) -> Path:
    """A video whose display matrix turns the coded picture ``ccw_degrees`` counter-clockwise; the coded
    pictures are pre-turned the other way, so the displayed frames are upright renders."""
    turns = ccw_degrees // 90
    coded_h, coded_w = (WIDTH, HEIGHT) if turns % 2 else (HEIGHT, WIDTH)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, "yuv420p"
        stream.set_display_rotation(ccw_degrees)
        for i in range(num_frames):
            upright = render_frame(i, i / FPS, WIDTH, HEIGHT)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(upright, -turns)), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("ccw_degrees", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, ccw_degrees):
    path = write_rotated_video(tmp_path / f"rot{ccw_degrees}.mp4", ccw_degrees)
    info = probe(path)
    assert info.rotation == (-ccw_degrees) % 360  # clockwise, like the `rotate` tag
    assert (info.height, info.width) == (HEIGHT, WIDTH)  # display size: upright
    targets = [0.0, 0.5, 1.1]
    for size, hw in [(None, (HEIGHT, WIDTH)), (36, (36, 64)), ((40, 80), (40, 80))]:
        frames = decode_frames(path, targets, size)
        assert frames.shape == (3, *hw, 3)
        assert barcodes(frames) == [0, 12, 27]


def test_a_legacy_rotate_tag_is_applied(tmp_path):
    """Matroska keeps a `rotate` tag (clockwise degrees) as plain metadata, without a display matrix."""
    path = tmp_path / "tagged.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
        stream.metadata["rotate"] = "90"
        for i in range(10):
            upright = render_frame(i, i / FPS, WIDTH, HEIGHT)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(upright, 1)), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, WIDTH, HEIGHT)
    assert barcodes(decode_frames(path, [0.0, 0.3])) == [0, 7]


def write_offset_video(path: Path, offset_s: float, num_frames: int = 50) -> Path:
    """A video whose first frame is presented at ``offset_s`` (as in a clip cut from a stream)."""
    time_base = Fraction(1, FPS)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = 10
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(render_frame(i, i / FPS, WIDTH, HEIGHT), format="rgb24")
            frame.pts, frame.time_base = i + round(offset_s * FPS), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts"])
def test_timestamps_are_relative_to_a_non_zero_start(tmp_path, ext):
    path = write_offset_video(tmp_path / f"offset.{ext}", offset_s=3.0)
    info = probe(path)
    assert info.start_time == pytest.approx(3.0, abs=1e-3)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    times = candidate_timestamps(info)
    np.testing.assert_allclose(times, [0.5, 1.5])
    assert barcodes(decode_frames(path, [0.0, *times, 1.99, 5.0])) == [0, 12, 37, 49, 49]


def test_non_square_pixels_are_stretched_to_the_display_aspect(tmp_path):
    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, HEIGHT, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)  # each pixel twice as wide as tall
        for i in range(10):
            squeezed = render_frame(i, i / FPS, WIDTH, HEIGHT)[:, ::2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(squeezed), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    frames = decode_frames(path, [0.0, 0.2])
    assert frames.shape == (2, HEIGHT, WIDTH, 3)
    assert barcodes(frames) == [0, 5]


# --- candidate timestamps ------------------------------------------------------------------------------------


def info_of(duration: float) -> VideoInfo:
    return VideoInfo("x.mp4", duration, 25.0, round(duration * 25), "h264", 128, 72, 0, 0.0)


def test_candidates_at_an_exact_rate_are_interval_middles():
    np.testing.assert_allclose(candidate_timestamps(info_of(10.0)), np.arange(10) + 0.5)
    np.testing.assert_allclose(candidate_timestamps(info_of(3.0), fps=2.0), np.arange(6) / 2 + 0.25)


def test_a_partial_last_interval_gives_the_middle_of_its_covered_part():
    times = candidate_timestamps(info_of(10.3))
    np.testing.assert_allclose(times, [*(np.arange(10) + 0.5), 10.15])
    assert times[-1] < 10.3


def test_a_video_shorter_than_one_interval_gives_its_middle():
    np.testing.assert_allclose(candidate_timestamps(info_of(0.4)), [0.2])
    np.testing.assert_allclose(candidate_timestamps(info_of(0.0)), [0.0])


def test_float_noise_does_not_add_an_empty_interval():
    assert len(candidate_timestamps(info_of(10.000000001))) == 10


@pytest.mark.parametrize(("duration", "max_frames"), [(10_000.0, 4096), (4097.0, 4096), (100.0, 7), (5.0, 1)])
def test_long_videos_are_subsampled_to_exactly_max_frames(duration, max_frames):
    times = candidate_timestamps(info_of(duration), fps=1.0, max_frames=max_frames)
    assert times.dtype == np.float64 and len(times) == max_frames
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < duration
    # A subset of the uncapped 1 fps grid, spread evenly: every gap within one interval of the mean gap.
    np.testing.assert_allclose(times % 1.0, 0.5)
    gaps = np.diff(times)
    if len(gaps):
        assert gaps.max() - gaps.min() <= 1.0
    full = candidate_timestamps(info_of(duration), max_frames=10**9)
    assert len(full) == math.ceil(duration) and set(times) <= set(full)


def test_candidates_of_a_probed_video_decode_to_distinct_frames(videos):
    info = probe(videos["h264-mp4"])
    times = candidate_timestamps(info, fps=2.0)
    np.testing.assert_allclose(times, np.arange(8) / 2 + 0.25)
    assert barcodes(decode_frames(videos["h264-mp4"], times, 36)) == [6, 18, 31, 43, 56, 68, 81, 93]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": float("inf")}, "fps"),
        ({"max_frames": 0}, "max_frames"),
        ({"max_frames": 2.5}, "max_frames"),
        ({"max_frames": True}, "max_frames"),
    ],
)
def test_candidate_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        candidate_timestamps(info_of(10.0), **kwargs)


# --- argument checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamps", "match"),
    [
        ([0.0, float("nan")], r"timestamps\[1\]"),
        ([float("inf")], r"timestamps\[0\]"),
        ([1.0, 2.0, -0.5], r"timestamps\[2\] = -0.5"),
        ([[0.0, 1.0]], "1-D"),
        (1.0, "1-D"),
        (["a"], "sequence of numbers"),
    ],
)
def test_bad_timestamps_raise_precise_value_errors(videos, timestamps, match):
    with pytest.raises(ValueError, match=match):
        decode_frames(videos["h264-mp4"], timestamps)
    with pytest.raises(ValueError, match=match):
        iter_frames(videos["h264-mp4"], timestamps)  # checked at call time, before iterating


@pytest.mark.parametrize("size", [0, -4, True, 1.5, (10,), (0, 10), (10, 10, 3), "224"])
def test_bad_sizes_are_rejected(videos, size):
    with pytest.raises(ValueError, match="size"):
        decode_frames(videos["h264-mp4"], [0.0], size)


def test_bad_threads_and_batch_size_are_rejected(videos):
    with pytest.raises(ValueError, match="threads"):
        decode_frames(videos["h264-mp4"], [0.0], threads=-1)
    with pytest.raises(ValueError, match="batch_size"):
        iter_frames(videos["h264-mp4"], [0.0], batch_size=0)


def test_thread_counts_give_identical_frames(videos):
    targets = np.linspace(0, SECONDS, 11)
    reference = decode_frames(videos["hevc-mp4"], targets, threads=1)
    np.testing.assert_array_equal(decode_frames(videos["hevc-mp4"], targets, threads=0), reference)
    np.testing.assert_array_equal(decode_frames(videos["hevc-mp4"], targets, threads=3), reference)


# --- bad files -----------------------------------------------------------------------------------------------


def assert_raises_naming(error: type[VideoError], path: Path, decode_at: float | None = None) -> None:
    """``probe`` (or decoding at ``decode_at``) raises ``error`` with the file named in the message."""
    if decode_at is None:
        calls = [lambda: probe(path), lambda: decode_frames(path, [0.0]), lambda: next(iter_frames(path, [0.0]))]
    else:
        calls = [lambda: decode_frames(path, [decode_at]), lambda: next(iter_frames(path, [decode_at]))]
    for call in calls:
        with pytest.raises(error) as caught:
            call()
        assert str(path) in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError, match=r"missing\.mp4"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(VideoNotFoundError, match=r"missing\.mp4"):
        iter_frames(tmp_path / "missing.mp4", [0.0])  # at call time
    with pytest.raises(FileNotFoundError):  # VideoNotFoundError is also a FileNotFoundError
        decode_frames(str(tmp_path / "missing.mp4"), [0.0])
    with pytest.raises(VideoNotFoundError, match="is a folder, not a video file"):
        probe(tmp_path)


def test_text_random_bytes_and_images_are_not_videos(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("a plain text file\n" * 50)  # FFmpeg's tty demuxer would render it as ANSI art
    markdown = tmp_path / "notes.md"
    markdown.write_text("# not a video\n")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    image = tmp_path / "still.png"
    av.VideoFrame.from_ndarray(render_frame(0, 0.0, WIDTH, HEIGHT), format="rgb24").to_image().save(image)
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    for path in (text, markdown, noise, image, zero):
        assert_raises_naming(NotAVideoError, path)


@pytest.mark.parametrize(("ext", "codec"), [("m4a", "aac"), ("wav", "pcm_s16le"), ("mka", "aac")])
def test_audio_only_files_have_no_video_stream(tmp_path, ext, codec):
    path = tmp_path / f"sound.{ext}"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=16000, layout="mono")
        planar = codec == "aac"
        for i in range(8):
            samples = np.zeros((1, 1024), np.float32 if planar else np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp" if planar else "s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert_raises_naming(NoVideoStreamError, path)


def test_a_video_stream_without_frames_is_empty(tmp_path):
    path = tmp_path / "empty.mp4"
    # A fragmented MP4 keeps the track in its header even with no sample.
    with av.open(str(path), mode="w", options={"movflags": "empty_moov"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()
    assert len(av.open(str(path)).streams.video) == 1
    assert_raises_naming(EmptyVideoError, path)


def remux(source: Path, target: Path, movflags: str) -> Path:
    """Copy the packets of ``source`` into an MP4 written with the given ``movflags``."""
    with av.open(str(source)) as src, av.open(str(target), mode="w", options={"movflags": movflags}) as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is not None:
                packet.stream = out_stream
                dst.mux(packet)
    return target


def cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_truncated_mp4_with_the_index_at_the_end_cannot_be_opened(videos, tmp_path):
    path = cut_in_half(videos["h264-mp4"], tmp_path / "cut.mp4")
    assert_raises_naming(CorruptVideoError, path)
    with pytest.raises(CorruptVideoError, match="truncated"):
        probe(path)


@pytest.mark.parametrize("movflags", ["+faststart", "frag_keyframe+empty_moov+default_base_moof"])
def test_truncated_mp4_with_an_intact_header_is_reported_at_probe(videos, tmp_path, movflags):
    whole = remux(videos["h264-mp4"], tmp_path / "whole.mp4", movflags)
    assert barcodes(decode_frames(whole, [0.0, 3.9])) == [0, 97]  # the remux itself is fine
    path = cut_in_half(whole, tmp_path / "cut.mp4")
    assert_raises_naming(CorruptVideoError, path)
    with pytest.raises(CorruptVideoError, match="truncated"):
        probe(path)


@pytest.mark.parametrize("name", ["h264-mkv", "vp9-webm"])
def test_truncated_matroska_fails_when_asked_for_a_lost_frame(videos, tmp_path, name):
    """Matroska has no up-front index: the cut shows only when decoding runs out before the declared end."""
    path = cut_in_half(videos[name], tmp_path / f"cut{videos[name].suffix}")
    assert probe(path).duration == pytest.approx(SECONDS, abs=0.05)  # the header survives
    assert barcodes(decode_frames(path, [0.0, 0.5])) == [0, 12]  # frames before the cut are fine
    assert_raises_naming(CorruptVideoError, path, decode_at=3.9)
    with pytest.raises(CorruptVideoError, match="truncated"):
        decode_frames(path, [0.5, 3.9])


def test_a_codec_without_decoder_is_unsupported(videos, tmp_path):
    # Rename the H.264 sample entry to EVC (MPEG-5), which FFmpeg knows but this build cannot decode.
    path = tmp_path / "evc.mp4"
    path.write_bytes(videos["h264-mp4"].read_bytes().replace(b"avc1", b"evc1"))
    assert_raises_naming(UnsupportedCodecError, path)


def test_damaged_data_in_the_middle_is_an_error_not_garbage(videos, tmp_path):
    """Damage inside an intact file: the header still says where every frame is, but the bytes are gone."""
    whole = remux(videos["h264-mp4"], tmp_path / "whole.mp4", "+faststart")
    data = bytearray(whole.read_bytes())
    size = len(data)
    data[size // 2 : size - 64] = bytes(size - 64 - size // 2)  # zero most of the second half
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    assert barcodes(decode_frames(damaged, [0.0, 0.5])) == [0, 12]  # the intact first half still decodes
    with pytest.raises(CorruptVideoError, match="decoding failed after") as caught:
        decode_frames(damaged, [0.0, 3.9])
    assert str(damaged) in str(caught.value)


def test_probe_does_not_leave_files_open(videos):
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        probe(videos["h264-mp4"])
        decode_frames(videos["h264-mp4"], [1.0])
        batches = iter_frames(videos["h264-mp4"], [0.0, 1.0, 2.0], batch_size=1)
        next(batches)
        batches.close()  # abandoning an iterator part-way closes the file too
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
