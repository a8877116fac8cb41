"""Video input: probing, candidate timestamps and fast, exact, seek-aware frame decoding (PyAV / FFmpeg).

Three steps of the inference flow live here (DESIGN §1)::

    info = probe("talk.mp4")                        # duration, fps, size, rotation, ...
    times = candidate_timestamps(info)              # 1 fps over the whole video, capped at 4096
    for batch in iter_frames("talk.mp4", times, size=224):
        ...                                         # uint8 [B, H, W, 3] RGB, upright

Conventions
-----------
* Timestamps are float seconds **relative to the first frame** (``info.start_time`` is subtracted for you).
* The frame returned for ``t`` is the one *displayed* at ``t``: the last frame whose presentation time is
  ``<= start + t`` (1 µs tolerance for float rounding). Before the first frame this is the first frame; past the
  last frame it is the last frame -- unless the file's header says the video lasts longer than what could be
  decoded, which means the file is truncated and raises :class:`~msjoe.errors.CorruptVideoError`.
* Frames come out upright: the display matrix (or a legacy ``rotate`` tag) and non-square pixels are applied.
  Flips in the display matrix are not applied (rare; only the rotation part is read).
* Bad files raise the :mod:`msjoe.errors` video errors, each naming the file. A file cut short is caught at
  :func:`probe` when its header indexes data past its end (MP4, also with ``faststart`` or fragments) and
  otherwise when decoding runs out of frames before the declared duration (Matroska/WebM); damaged data
  that FFmpeg rejects raises :class:`~msjoe.errors.CorruptVideoError` instead of yielding a broken frame.

Why it is fast
--------------
* Only the frames that are returned are converted to RGB and scaled; every other frame is decoded (it may be a
  reference for later ones) and dropped as YUV. Scaling runs in YUV before the RGB conversion (2-3x faster
  than swscale's combined path).
* Seek-aware: before each target the reader compares "keep decoding from where the decoder is" with "seek to
  the keyframe before the target" and picks the cheaper one (see :meth:`_FrameReader._should_seek`). Sparse
  targets cost one GOP prefix each; dense targets (closer than a keyframe interval) are decoded in one pass.
* FFmpeg's frame and slice threads are used (``threads=0``: one per core).
* Memory is bounded by ``batch_size`` frames plus the decoder's own buffers, whatever the video's length.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np
from av.stream import Disposition
from av.video.reformatter import Interpolation, VideoReformatter

from msjoe.checks import check_int, check_sampling
from msjoe.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NotAVideoError,
    NoVideoStreamError,
    UnsupportedCodecError,
    VideoNotFoundError,
)

__all__ = [
    "DEFAULT_FPS",
    "DEFAULT_MAX_FRAMES",
    "VideoInfo",
    "candidate_timestamps",
    "decode_frames",
    "fit_to_pixel_budget",
    "format_time",
    "iter_frames",
    "iter_frames_at_sizes",
    "probe",
    "sniff_container",
]

DEFAULT_FPS = 1.0
"""Candidate frames per second (paper: 1 fps over the whole video)."""
DEFAULT_MAX_FRAMES = 4096
"""Cap on the number of candidates (ours); longer videos are subsampled uniformly."""

Size = int | tuple[int, int] | None

# A frame at exactly the requested time counts as displayed at it despite float rounding of seconds -> ticks.
_TIME_TOLERANCE_S = 1e-6
# Seeking costs a demuxer seek, a decoder flush and refilling the frame-thread pipeline: a few frames' worth of
# decoding. So a seek must skip more than this many frames to pay off (measured with bench/bench_decode.py).
_SEEK_MARGIN_FRAMES = 3
# Without any keyframe index and before two keyframes were seen, the keyframe interval is unknown; most
# encoders put one at least every 10 s, so a longer jump is a seek (a wrong guess only costs time).
_BLIND_SEEK_SECONDS = 10.0
# A decoded stream that ends more than this much (and more than two frames) before its declared duration
# was cut short.
_TRUNCATION_TOLERANCE_S = 0.5
# FFmpeg opens text files (tty demuxer) and single images (image2 / *_pipe demuxers) as one-stream "videos".
_NON_VIDEO_FORMATS = ("tty", "image2")


def format_time(seconds: float) -> str:
    """``h:mm:ss.s`` (or ``m:ss.s`` under an hour): how video players show positions."""
    minutes, sec = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{sec:04.1f}" if hours else f"{minutes}:{sec:04.1f}"


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video.

    Attributes:
        path: the file, as given.
        duration: seconds from the first frame to the end of the last frame's display, as the header says
            (the video stream's own duration, else the container's; read from the packets if neither is set).
        fps: average frame rate (frames per second); for variable-frame-rate videos an average.
        num_frames: frame count; exact when the container stores it (MP4/MOV/AVI), otherwise
            ``round(duration * fps)``.
        codec: FFmpeg's codec name (``h264``, ``hevc``, ``vp9``, ``av1``, ``mpeg4``...).
        width: display width in pixels, after rotation and non-square pixels.
        height: display height in pixels, after rotation and non-square pixels.
        rotation: clockwise degrees (0, 90, 180 or 270) the coded picture is turned for display, as in the
            ``rotate`` tag phones write (a portrait phone video typically says 90). Decoded frames are
            already turned.
        start_time: presentation time of the first frame in seconds (non-zero in some files, e.g. cut
            from a stream); all timestamps of this module are relative to it.
    """

    path: str
    duration: float
    fps: float
    num_frames: int
    codec: str
    width: int
    height: int
    rotation: int
    start_time: float


# --- public API ----------------------------------------------------------------------------------------------


def probe(path: str | Path) -> VideoInfo:
    """Read a video's header and decode its first frame (for the start time and rotation).

    Raises:
        VideoNotFoundError: ``path`` does not exist or is not a file.
        NotAVideoError: FFmpeg cannot open it as media (text, random bytes, a still image).
        NoVideoStreamError: it opens but has no video stream (e.g. audio only).
        UnsupportedCodecError: this FFmpeg build has no decoder for its video codec.
        EmptyVideoError: the video stream has no frame.
        CorruptVideoError: truncated or damaged (e.g. an MP4 whose index points past the end of the file).
    """
    path = existing_video_file(path)
    with _open_video(path) as (container, stream):
        reader = _FrameReader(container, stream, path, threads=1)
        duration = reader.declared_duration_s
        if duration is None:
            duration = reader.scan_duration_s()
        fps = _average_fps(stream)
        if fps is None:
            fps = stream.frames / duration if stream.frames and duration > 0 else 0.0
        num_frames = stream.frames if stream.frames > 0 else max(1, round(duration * fps))
        height, width = _output_hw(reader.display_hw, None)
        return VideoInfo(
            path=str(path),
            duration=duration,
            fps=fps,
            num_frames=num_frames,
            codec=stream.codec_context.codec.canonical_name,
            width=width,
            height=height,
            rotation=reader.rotation_cw,
            start_time=reader.start_pts * reader.time_base,
        )


def round_seconds(seconds: float) -> float:
    """``seconds`` rounded to the microsecond, for printing and JSON: 5.14 rather than the 5.140000000000001 that
    float arithmetic leaves in candidate times. A microsecond is within the frame store's matching tolerance, so
    a printed time still names the same candidate. Computations keep the exact values."""
    return round(float(seconds), 6)


def candidate_timestamps(info: VideoInfo, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES) -> np.ndarray:
    """Candidate frame times: one per ``1/fps`` interval over the whole video, at most ``max_frames``.

    The video ``[0, duration)`` is cut into intervals ``[i/fps, (i+1)/fps)``; each interval that starts before
    the end gives the time at its middle, and the last, possibly partial, interval gives the middle of its
    covered part. So a 10.3 s video at 1 fps gives 0.5, 1.5, ..., 9.5, 10.15 -- every time is inside the video
    (never past the last frame's display) and a video shorter than ``1/fps`` gives its own middle. Middles
    rather than starts, because the first frame of a video (or of a 1 s interval) is often a fade or a cut.
    When there are more than ``max_frames`` intervals, exactly ``max_frames`` are kept, uniformly spread
    (the middle one of each of ``max_frames`` equal groups).

    Returns:
        float64 seconds relative to the video start, sorted and distinct.
    """
    check_sampling(fps, max_frames)
    duration = float(info.duration)
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"info.duration must be a finite number >= 0, got {info.duration!r} for {info.path}")
    if duration == 0.0:  # a single frame with no known display time
        return np.zeros(1, dtype=np.float64)
    # Intervals whose start is before the end; the small slack keeps float noise (10.000000001 s) from
    # adding an interval that holds no frame.
    count = max(1, math.ceil(duration * fps - 1e-6))
    starts = np.arange(count, dtype=np.float64) / fps
    ends = np.minimum(starts + 1.0 / fps, duration)
    times = (starts + ends) / 2.0
    if count > max_frames:
        # Group g of max_frames equal groups spans intervals [g * r, (g + 1) * r), r = count / max_frames > 1;
        # taking floor((g + 0.5) * r) gives distinct, evenly spread indices.
        keep = ((np.arange(max_frames) + 0.5) * (count / max_frames)).astype(np.int64)
        times = times[keep]
    return times


def iter_frames(
    path: str | Path,
    timestamps: Sequence[float] | np.ndarray,
    size: Size = None,
    *,
    threads: int = 0,
    batch_size: int = 64,
) -> Iterator[np.ndarray]:
    """Decode the frames displayed at ``timestamps``, yielding uint8 RGB batches ``[B, H, W, 3]``.

    Frames come in the caller's order, ``batch_size`` at a time (the last batch may be smaller); duplicates
    are returned as many times as asked. Timestamps may come in any order: each batch is decoded in sorted
    order and put back in the caller's order, so sorted input (the usual case) is decoded in one sweep and
    unsorted input is still exact, at the cost of extra seeks.

    Args:
        path: the video file.
        timestamps: seconds relative to the video start (finite, >= 0); see the module doc for which frame
            is returned.
        size: ``None`` for the native display size; an int for the shorter side (aspect ratio kept, the
            longer side rounded to an even number); ``(height, width)`` for an exact size. Shrinking uses
            area averaging, enlarging bicubic interpolation.
        threads: decoder threads; 0 = one per CPU core.
        batch_size: frames per yielded batch; bounds memory.

    Arguments are checked when called; the file is opened on the first ``next()``, which raises the
    :mod:`msjoe.errors` video errors listed in :func:`probe`.
    """
    return (
        batches[0] for batches in iter_frames_at_sizes(path, timestamps, [size], threads=threads, batch_size=batch_size)
    )


def iter_frames_at_sizes(
    path: str | Path,
    timestamps: Sequence[float] | np.ndarray,
    sizes: Sequence[Size],
    *,
    threads: int = 0,
    batch_size: int = 64,
) -> Iterator[tuple[np.ndarray, ...]]:
    """:func:`iter_frames` at several sizes in one decoding pass: one batch per size for each step.

    Each decoded frame is scaled and converted once per size, so the batches equal what :func:`iter_frames` gives
    for each size alone (the same swscale operations on the same decoded frame), for the cost of one decoding pass.
    Indexing uses it to produce the encoder's input and the frame store's JPEGs together.
    """
    path = existing_video_file(path)
    times = _check_timestamps(timestamps)
    one_size = isinstance(sizes, numbers.Integral) or (
        isinstance(sizes, tuple) and len(sizes) == 2 and all(isinstance(v, numbers.Integral) for v in sizes)
    )
    if one_size or not isinstance(sizes, Sequence) or not sizes:
        raise ValueError(f"sizes must be a non-empty list of sizes (each as iter_frames' size), got {sizes!r}")
    checked = tuple(_check_size(size) for size in sizes)
    check_int("threads", threads, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    return _iter_batches(path, times, checked, threads, batch_size)


def decode_frames(
    path: str | Path,
    timestamps: Sequence[float] | np.ndarray,
    size: Size = None,
    *,
    threads: int = 0,
) -> np.ndarray:
    """All frames at ``timestamps`` as one uint8 array ``[N, H, W, 3]``; see :func:`iter_frames`."""
    path = existing_video_file(path)
    times = _check_timestamps(timestamps)
    size = _check_size(size)
    check_int("threads", threads, minimum=0)
    if len(times) == 0:
        info = probe(path)
        height, width = _output_hw((info.height, info.width), size)
        return np.empty((0, height, width, 3), dtype=np.uint8)
    return next(_iter_batches(path, times, (size,), threads, batch_size=len(times)))[0]


# --- decoding ------------------------------------------------------------------------------------------------


def _iter_batches(
    path: Path, times: np.ndarray, sizes: tuple[Size, ...], threads: int, batch_size: int
) -> Iterator[tuple[np.ndarray, ...]]:
    if len(times) == 0:
        return
    with _open_video(path) as (container, stream):
        reader = _FrameReader(container, stream, path, threads=threads)
        converters = [_RgbConverter(reader, size) for size in sizes]
        last_frame, last_rgbs = None, ()  # neighbouring targets often share a frame: convert it once
        for begin in range(0, len(times), batch_size):
            chunk = times[begin : begin + batch_size]
            batches = tuple(np.empty((len(chunk), c.height, c.width, 3), dtype=np.uint8) for c in converters)
            for i in np.argsort(chunk, kind="stable"):
                frame = reader.frame_at(float(chunk[i]))
                if frame is not last_frame:
                    last_frame, last_rgbs = frame, tuple(convert(frame) for convert in converters)
                for batch, rgb in zip(batches, last_rgbs, strict=True):
                    batch[i] = rgb
            yield batches


class _FrameReader:
    """An open video stream that answers "which frame is displayed at time t?" for any sequence of times.

    State: ``_current`` is the last frame handed over by the decoder that is displayed at or before the
    last requested time, ``_next`` the frame decoded after it (peeked, not yet passed). The answer for a
    time t >= ``_current`` is found by moving forward until ``_next`` is later than t -- decoding a frame
    past each target is the only way to know the target's frame is the last one at or before it.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.VideoStream, path: Path, threads: int):
        self._container = container
        self._stream = stream
        self._path = path
        codec_context = stream.codec_context
        codec_context.thread_type = "AUTO"  # frame + slice threads
        codec_context.thread_count = threads  # 0: FFmpeg picks one per core
        self.time_base = float(stream.time_base)
        self._ticks_per_s = 1.0 / self.time_base
        self._tolerance = _TIME_TOLERANCE_S * self._ticks_per_s
        fps = _average_fps(stream) or 25.0
        self._frame_ticks = self._ticks_per_s / fps  # nominal frame duration
        self._seek_margin = _SEEK_MARGIN_FRAMES * self._frame_ticks

        self._run: Iterator[av.VideoFrame] | None = None  # the frames of the current decoding run
        self._current: av.VideoFrame | None = None
        self._next: av.VideoFrame | None = None
        self._eof = False
        self._run_start: float = -math.inf  # where the decoder was (re)started
        self._run_first: float | None = None  # pts of the first frame of the current run
        # For files without a seek index (MPEG-TS, raw streams): keyframes seen so far, and the longest interval
        # between two keyframes decoded one after the other.
        self._keyframes: list[float] = []
        self._max_keyframe_gap = 0.0
        self._run_last_keyframe: float | None = None
        self._stream_start_ok = True  # the current run starts at the stream's first frame: clamping to it is right
        self._skip_to_keyframe = False  # drop packets before the run's first keyframe (after a seek)
        self.start_pts = -math.inf

        first = self._peek()
        if first is None:
            raise EmptyVideoError(f"{path}: the video stream has no frame")
        self.start_pts: float = self._pts(first)
        self._run_start = self.start_pts
        # The display matrix (FFmpeg attaches it to every frame) gives a counter-clockwise angle; turning the
        # picture by it makes it upright. Files without one may carry the legacy clockwise `rotate` tag.
        self.rotation_ccw = round(first.rotation / 90.0) * 90 % 360
        if self.rotation_ccw == 0:
            self.rotation_ccw = -_rotate_tag(stream) % 360
        self.rotation_cw = (-self.rotation_ccw) % 360
        sar = stream.sample_aspect_ratio
        coded_w, coded_h = first.width, first.height
        self.coded_size = (coded_w, coded_h)
        self.pixel_aspect = float(sar) if sar and sar > 0 and sar != 1 else 1.0
        display_w = max(2, 2 * round(coded_w * self.pixel_aspect / 2)) if self.pixel_aspect != 1.0 else coded_w
        self.display_hw = (display_w, coded_h) if self.rotation_ccw in (90, 270) else (coded_h, display_w)
        self.declared_duration_s, self._duration_is_stream_level = _declared_duration(
            container, stream, self.start_pts * self.time_base
        )
        # Seek index (MP4/MOV/AVI: every keyframe; Matroska: its cues). MP4 indexes decode times, which run
        # ahead of presentation times by the reorder delay when there are B-frames: learn that offset from
        # the first keyframe (whose presentation time is the start).
        entries = stream.index_entries
        # Only an index read with the header (MP4/MOV/AVI sample tables, Matroska cues) tells where a seek
        # lands; some demuxers (MPEG-TS) add entries as they read, which says nothing about the parts not read.
        self._has_index = len(entries) > 0
        first_key = next((e for e in (entries[i] for i in range(min(len(entries), 64))) if e.is_keyframe), None)
        self._index_offset = self.start_pts - first_key.timestamp if first_key is not None else 0.0

    # -- the one public operation --

    def frame_at(self, seconds: float) -> av.VideoFrame:
        """The frame displayed at ``seconds`` after the start (clamped to the first / last frame)."""
        target = self.start_pts + seconds * self._ticks_per_s
        if self._should_seek(target):
            self._seek(target)
        while True:
            upcoming = self._peek()
            if upcoming is not None and self._pts(upcoming) <= target + self._tolerance:
                self._current, self._next = upcoming, None
                continue
            if self._current is not None:
                break
            # Nothing at or before the target since the decoder (re)started. At the very start of the stream
            # the target precedes the first frame: clamp to it. Otherwise the seek landed after the target
            # (or somewhere no frame can be decoded from, e.g. mid-GOP in an MPEG-TS): go back further.
            if self._stream_start_ok:
                if upcoming is None:
                    raise CorruptVideoError(f"{self._path}: no frame could be decoded near {seconds:.3f} s")
                self._current, self._next = upcoming, None
                break
            self._seek_earlier(target, target if upcoming is None else self._pts(upcoming))
        if upcoming is None:
            self._check_not_truncated(target)
        return self._current

    # -- seeking --

    def _should_seek(self, target: float) -> bool:
        """Seek (to the keyframe before ``target``) or keep decoding from where the decoder is?

        Continuing costs decoding every frame from the decoder's position to the target. Seeking costs
        decoding from the keyframe before the target (landing) to the target, plus a fixed overhead of a
        few frames (flush, pipeline refill). Both decode landing -> target, so seeking wins exactly when the
        landing keyframe is ahead of the decoder's position by more than that overhead -- i.e. when at least
        one keyframe lies between here and the target. For 1-fps targets in a video with 10-s GOPs this means:
        decode straight through each GOP, and jump from the last target of a GOP to the next keyframe,
        skipping the GOP's tail.
        """
        if self._current is not None and target < self._pts(self._current) - self._tolerance:
            return True  # backwards: only a seek can go there
        if self._next is not None:
            position = self._pts(self._next)
        elif self._current is not None:
            if self._eof:
                return False  # past the last frame: the answer is the last frame
            position = self._pts(self._current)
        else:
            position = self._run_start
        if self._has_index:
            entries = self._stream.index_entries
            i = entries.search_timestamp(math.floor(target - self._index_offset), backward=True)
            return i >= 0 and entries[i].timestamp + self._index_offset > position + self._seek_margin
        # No index. A keyframe already seen between here and the target makes a seek worth it for sure.
        i = bisect.bisect_right(self._keyframes, target + self._tolerance)
        if i > 0 and self._keyframes[i - 1] > position + self._seek_margin:
            return True
        # Otherwise guess: a jump longer than the longest keyframe interval seen (or, before two keyframes were
        # seen in a row, than most encoders' interval) has a keyframe in between. A wrong guess costs only time.
        interval = self._max_keyframe_gap or _BLIND_SEEK_SECONDS * self._ticks_per_s
        return target - position > interval + self._seek_margin

    def _seek(self, target: float) -> None:
        # Seeking in stream ticks with BACKWARD lands on the last keyframe at or before the target
        # (FFmpeg's MP4 demuxer accounts for B-frame reordering; the caller re-checks the landing anyway).
        self._restart(max(math.floor(target), int(self.start_pts)))

    def _seek_earlier(self, target: float, landed: float) -> None:
        """The last seek landed after ``target``: seek again before it, going back further each time."""
        back = max(self._ticks_per_s, 2.0 * (landed - target))
        while True:
            position = target - back
            if position <= self.start_pts:
                self._restart(int(self.start_pts), from_stream_start=True)
                return
            if position < self._run_start:
                self._restart(math.floor(position))
                return
            back *= 2.0

    def _restart(self, position: int, from_stream_start: bool = False) -> None:
        self._close_run()
        try:
            self._container.seek(position, stream=self._stream, backward=True)
        except av.error.FFmpegError as error:
            raise CorruptVideoError(f"{self._path}: cannot seek to {self._seconds(position):.3f} s: {error}") from error
        self._current = self._next = None
        self._eof = False
        self._run_start = float(position)
        self._run_first = None
        self._run_last_keyframe = None
        self._stream_start_ok = from_stream_start or position <= self.start_pts
        # Some demuxers (MPEG-TS) seek to any packet near the position: frames decoded before the next
        # keyframe would lack their references (garbage for some codecs), so the run starts at a keyframe.
        self._skip_to_keyframe = not self._stream_start_ok

    # -- decoding --

    def _peek(self) -> av.VideoFrame | None:
        """The next decoded frame (kept until consumed), or None at the end of the stream."""
        if self._next is None and not self._eof:
            if self._run is None:
                self._run = self._decode_run()
            self._next = next(self._run, None)
            if self._next is None:
                self._eof = True
            else:
                pts = self._pts(self._next)
                if self._run_first is None:
                    self._run_first = pts
                    # After a seek, the run starts at the stream's first frame only if it starts at or before it.
                    self._stream_start_ok = self._stream_start_ok or pts <= self.start_pts + self._tolerance
                if self._next.key_frame:
                    i = bisect.bisect_left(self._keyframes, pts)
                    if i == len(self._keyframes) or self._keyframes[i] != pts:
                        self._keyframes.insert(i, pts)
                    if self._run_last_keyframe is not None:
                        self._max_keyframe_gap = max(self._max_keyframe_gap, pts - self._run_last_keyframe)
                    self._run_last_keyframe = pts
        return self._next

    def _decode_run(self) -> Iterator[av.VideoFrame]:
        """Decode from the demuxer's current position to the end, mapping FFmpeg failures to our errors."""
        last_pts = self._run_start
        skipping = self._skip_to_keyframe
        try:
            for packet in self._container.demux(self._stream):
                if skipping:
                    if not packet.is_keyframe:
                        continue
                    skipping = False
                if packet.is_corrupt:
                    raise CorruptVideoError(f"{self._path}: damaged data {self._where(last_pts)}")
                for frame in packet.decode():
                    last_pts = self._pts(frame)
                    yield frame
        except av.error.FFmpegError as error:
            raise CorruptVideoError(f"{self._path}: decoding failed {self._where(last_pts)}: {error}") from error

    def _close_run(self) -> None:
        if self._run is not None:
            self._run.close()  # releases the demux generator's packet buffer now rather than at GC
            self._run = None

    def _pts(self, frame: av.VideoFrame) -> float:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            raise CorruptVideoError(
                f"{self._path}: its frames carry no timestamps (a raw elementary stream?); put it in a container "
                "first, e.g. `ffmpeg -i in.h264 -c copy out.mp4`"
            )
        return float(pts)

    def _seconds(self, pts: float) -> float:
        return (pts - self.start_pts) * self.time_base

    def _where(self, pts: float) -> str:
        return f"after {self._seconds(pts):.3f} s" if math.isfinite(pts + self.start_pts) else "at the first frame"

    def _check_not_truncated(self, target: float) -> None:
        """At the end of the stream: a target beyond the decoded end but within the declared one means the
        file lost its tail; returning the last frame would silently be wrong."""
        if not self._duration_is_stream_level or self._current is None:
            return
        last = self._current
        duration = last.duration if last.duration else self._frame_ticks
        decoded_end = self._pts(last) + duration
        declared_end = self.start_pts + self.declared_duration_s * self._ticks_per_s
        slack = max(_TRUNCATION_TOLERANCE_S * self._ticks_per_s, 2 * self._frame_ticks)
        if declared_end - decoded_end > slack and target > decoded_end + self._tolerance:
            raise CorruptVideoError(
                f"{self._path}: frames end at {self._seconds(decoded_end):.3f} s but the header says the video "
                f"lasts {self.declared_duration_s:.3f} s; the file is truncated or damaged"
            )

    def scan_duration_s(self) -> float:
        """Duration by reading every packet's time (no decoding); for files whose header does not tell."""
        self._close_run()
        self._container.seek(int(self.start_pts), stream=self._stream, backward=True)
        end = self.start_pts
        for packet in self._container.demux(self._stream):
            if packet.pts is not None:
                end = max(end, packet.pts + (packet.duration or self._frame_ticks))
        self._restart(int(self.start_pts), from_stream_start=True)
        return (end - self.start_pts) * self.time_base


class _RgbConverter:
    """Turns a decoded frame into an upright uint8 RGB array of the requested size.

    Scaling happens in the decoder's own pixel format (YUV) and the colour conversion at the output size:
    two swscale passes that run 2-3x faster than swscale's one-pass scale-and-convert (which takes its
    generic, unvectorised path); the price is a slightly softer chroma at sharp colour edges (mean difference
    about 1 level in 255 on the synthetic test videos).
    """

    def __init__(self, reader: _FrameReader, size: Size):
        self.height, self.width = _output_hw(reader.display_hw, size)
        self._turns = reader.rotation_ccw // 90  # np.rot90 turns counter-clockwise, like the display matrix
        # swscale scales the coded picture, before it is turned.
        self._scaled_w, self._scaled_h = (self.height, self.width) if self._turns % 2 else (self.width, self.height)
        coded_w, coded_h = reader.coded_size
        self._scales = (self._scaled_w, self._scaled_h) != (coded_w, coded_h)
        shrinking = self._scaled_w * self._scaled_h < coded_w * coded_h
        # Area averaging is the alias-free choice for shrinking; bicubic for enlarging.
        self._interpolation = Interpolation.AREA if shrinking else Interpolation.BICUBIC
        # Reused: each keeps one swscale context instead of building one per frame.
        self._scaler = VideoReformatter()
        self._to_rgb = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._scales:
            frame = self._scaler.reformat(
                frame,
                width=self._scaled_w,
                height=self._scaled_h,
                interpolation=self._interpolation,
                dst_color_range=frame.color_range or None,  # keep the range (and its tag) for the conversion
            )
        rgb = self._to_rgb.reformat(frame, format="rgb24").to_ndarray()
        return np.rot90(rgb, self._turns) if self._turns else rgb


# --- opening and header fields -------------------------------------------------------------------------------


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open ``path`` and pick its video stream, mapping every failure to a specific :mod:`msjoe.errors` class."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except FileNotFoundError as error:
        raise VideoNotFoundError(f"video file not found: {path}") from error
    except PermissionError:
        raise
    except av.error.FFmpegError as error:
        kind = sniff_container(path)
        if kind is None:
            raise NotAVideoError(f"{path} is not a video file FFmpeg can open ({error.strerror})") from error
        if isinstance(error, av.error.EOFError):
            raise EmptyVideoError(f"{path}: the {kind} file ends before its first frame") from error
        raise CorruptVideoError(
            f"{path} looks like a {kind} file but FFmpeg cannot open it ({error.strerror}); it is probably "
            "truncated or damaged (an MP4 cut short loses its index when the index is at the end)"
        ) from error
    with container:
        format_names = container.format.name.split(",")
        if any(name in _NON_VIDEO_FORMATS or name.endswith("_pipe") for name in format_names):
            raise NotAVideoError(f"{path} is not a video (FFmpeg reads it as {container.format.long_name!r})")
        streams = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
        if not streams:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise NoVideoStreamError(f"{path} has no video stream (it holds: {kinds})")
        stream = streams[0]
        if stream.codec_context is None:
            raise UnsupportedCodecError(
                f"{path}: this FFmpeg build (PyAV {av.__version__}) has no decoder for its video codec; "
                "re-encode it, e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`"
            )
        _check_index_within_file(path, stream)
        yield container, stream


def _check_index_within_file(path: Path, stream: av.VideoStream) -> None:
    """An MP4 index that points past the end of the file means the file was cut (its header is intact)."""
    entries = stream.index_entries
    if len(entries) == 0:
        return
    last = entries[len(entries) - 1]
    file_size = path.stat().st_size
    if last.pos >= 0 and last.size > 0 and last.pos + last.size > file_size:
        raise CorruptVideoError(
            f"{path} is truncated: its index refers to byte {last.pos + last.size} but the file has {file_size}"
        )


def sniff_container(path: str | Path) -> str | None:
    """Name of the video container the file's first bytes announce, if any (to tell damaged from not-video, and
    for services to refuse anything else, such as playlists, before FFmpeg opens it)."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError:
        return None
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "MP4/QuickTime"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:3] == b"FLV":
        return "FLV"
    if head[:4] == b"OggS":
        return "Ogg"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "MPEG-TS"
    return None


def _declared_duration(
    container: av.container.InputContainer, stream: av.VideoStream, start_s: float
) -> tuple[float | None, bool]:
    """The video stream's length in seconds according to the header (None if it does not say), and whether it
    is the video stream's own (reliable) rather than the whole container's."""
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base), True
    # FFmpeg's Matroska muxer writes the stream's end time as a DURATION tag ("HH:MM:SS.nnnnnnnnn").
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            end = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            end = None
        if end is not None and end > start_s:
            return end - start_s, True
    if container.duration is not None and container.duration > 0:
        # Container duration covers all streams (audio may run longer); still the best the header offers.
        container_start = (container.start_time or 0) / av.time_base
        return max(0.0, container.duration / av.time_base - max(0.0, start_s - container_start)), False
    return None, False


def _rotate_tag(stream: av.VideoStream) -> int:
    """Clockwise degrees of a `rotate` metadata tag (multiple of 90), 0 if absent or unreadable."""
    value = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), None)
    try:
        return round(float(value) / 90.0) * 90 % 360 if value is not None else 0
    except ValueError:
        return 0


def _average_fps(stream: av.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0 and math.isfinite(float(rate)):
            return float(rate)
    return None


def _output_hw(display_hw: tuple[int, int], size: Size) -> tuple[int, int]:
    """(height, width) of the returned frames for a display size and a ``size`` argument."""
    display_h, display_w = display_hw
    if size is None:
        return display_h, display_w
    if isinstance(size, tuple):
        return size
    short, long = min(display_h, display_w), max(display_h, display_w)
    scaled_long = max(2, 2 * round(size * long / short / 2))
    return (size, scaled_long) if display_h <= display_w else (scaled_long, size)


# --- argument checks -----------------------------------------------------------------------------------------


def existing_video_file(path: str | Path) -> Path:
    """``path`` as a :class:`Path` if it names an existing regular file.

    Raises:
        VideoNotFoundError: nothing is there, or a folder (or another non-file) is; the message says which.
    """
    if not isinstance(path, str | Path):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(f"video file not found: {path}")
    if path.is_dir():
        raise VideoNotFoundError(f"{path} is a folder, not a video file")
    if not path.is_file():
        raise VideoNotFoundError(f"{path} is not a regular file (a device, socket or pipe), so not a video file")
    return path


def _check_timestamps(timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        times = np.asarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"timestamps must be a 1-D sequence of numbers (seconds): {error}") from error
    if times.ndim != 1:
        raise ValueError(f"timestamps must be a 1-D sequence of seconds, got an array of shape {times.shape}")
    bad = np.flatnonzero(~np.isfinite(times) | (times < 0))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"timestamps must be finite seconds >= 0; timestamps[{i}] = {float(times[i])!r} ({len(bad)} invalid in all)"
        )
    return times


def _check_size(size: Size) -> Size:
    if size is None:
        return None
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"size must be >= 1 (the shorter side in pixels), got {size}")
        return int(size)
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(f"size must be None, an int (shorter side) or a (height, width) pair of ints >= 1, got {size!r}")


def fit_to_pixel_budget(height: int, width: int, max_pixels: int, multiple: int = 1) -> tuple[int, int]:
    """Size ``(h, w)`` close to ``height x width`` in aspect ratio, with both sides multiples of ``multiple``
    and ``h * w <= max_pixels`` (never below ``multiple x multiple``). Images within budget are not enlarged
    beyond rounding to the nearest multiple."""
    if height <= 0 or width <= 0 or max_pixels <= 0 or multiple <= 0:
        raise ValueError(f"fit_to_pixel_budget needs positive sizes, got {height=} {width=} {max_pixels=} {multiple=}")
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    new_height = max(multiple, round(height * scale / multiple) * multiple)
    new_width = max(multiple, round(width * scale / multiple) * multiple)
    if new_height * new_width > max_pixels:  # rounding went over budget: round down instead
        new_height = max(multiple, math.floor(height * scale / multiple) * multiple)
        new_width = max(multiple, math.floor(width * scale / multiple) * multiple)
    if new_height * new_width > max_pixels:  # one side was raised to `multiple` (extreme aspect): cut the other
        if new_height == multiple:
            new_width = max(multiple, max_pixels // new_height // multiple * multiple)
        else:
            new_height = max(multiple, max_pixels // new_width // multiple * multiple)
    return new_height, new_width
