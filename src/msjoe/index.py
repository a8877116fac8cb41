"""Indexing: a video's candidate frames -> cached frame embeddings (the first, query-independent stage).

Indexing is the expensive part of answering a question about a long video (decoding ~3600 frames and running the
image tower on each) and does not depend on the question, so its result is cached per (video content, encoder
checkpoint, fps, frame cap). A second question about the same video reads one file and decodes nothing::

    encoder = DualEncoder.from_pretrained(DEFAULT_CLIP)
    cache = FeatureCache()                                  # $MSJOE_CACHE or ~/.cache/msjoe/features
    features = index_video("talk.mp4", encoder, cache)     # FrameFeatures: timestamps [T], embeddings [T, D]
    report = index_videos(paths, encoder, cache, progress=True)   # a whole dataset, resumable

Opt-in: with ``frame_store=FrameStore.for_cache(cache)`` indexing also keeps every candidate frame as a JPEG (a
second streaming decode pass at the store's size), so questions read their preview and key frames from it instead
of seeking in the video (see :mod:`msjoe.frame_store`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from msjoe.cache import CacheKey, FeatureCache, FrameFeatures, fingerprint
from msjoe.errors import CacheError, ModelLoadError
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.progress import progress_bar
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, VideoInfo, candidate_timestamps, iter_frames, probe

__all__ = ["IndexFailure", "IndexReport", "index_video", "index_videos"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` after each step (frames for one video, videos for a batch)."""


def index_video(
    path: str | Path,
    encoder: DualEncoder,
    cache: FeatureCache | None = None,
    *,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    batch_size: int = 64,
    threads: int = 0,
    progress: bool | ProgressCallback = False,
    frame_store: FrameStore | None = None,
) -> FrameFeatures:
    """Embed a video's candidate frames (``fps`` per second, at most ``max_frames``), using the cache if given.

    Cache hit: the file is fingerprinted (3 MiB read) and the entry loaded; nothing is probed or decoded.
    Miss: probe, candidate timestamps, decode at the encoder's input resolution (:attr:`DualEncoder.frame_size`)
    and encode, ``batch_size`` frames at a time (memory holds one batch of frames, whatever the video's length),
    then store. With a cache, the returned embeddings are the stored ones (float16-rounded), so the first and
    every later call return identical features.

    Args:
        path: the video file.
        encoder: the frozen dual encoder; its ``model_id`` and ``revision`` key the cache.
        cache: where to look up and store features; ``None`` computes without caching.
        fps, max_frames: candidate sampling (see :func:`msjoe.video.candidate_timestamps`).
        batch_size: frames decoded and encoded together.
        threads: decoder threads (0: one per core).
        progress: ``True`` for a progress bar on the terminal, or ``callback(frames_done, frames_total)`` (a
            frame store build reports its own pass from 0 again).
        frame_store: also keep the candidate frames as JPEGs for later questions, unless already stored (also on a
            feature cache hit). One more decode pass over the video, at the store's size.

    Raises:
        msjoe.errors.VideoError subclasses: the video is missing, not a video, empty, corrupt, ...
        CacheError: the cache or frame store directory cannot be written (checked before any decoding).
    """
    _check_sampling(fps, max_frames, batch_size)
    key, features = _lookup(path, encoder, cache, fps, max_frames)
    if features is None:
        if cache is not None:
            cache.ensure_writable()  # fail before minutes of decoding, not after
        if frame_store is not None:
            frame_store.ensure_writable()
        with _frame_progress(progress, Path(path).name) as report:
            features = _compute(path, encoder, fps, max_frames, batch_size, threads, report)
        if cache is not None and key is not None:
            features = cache.put(key, features)
    if frame_store is not None:
        video_fingerprint = key.fingerprint if key is not None else None
        frame_bar = functools.partial(_frame_progress, progress)
        _store_frames(frame_store, path, video_fingerprint, fps, max_frames, threads, frame_bar)
    return features


@dataclass(frozen=True)
class IndexFailure:
    """A video :func:`index_videos` could not index, and why."""

    path: str
    error_type: str
    message: str


@dataclass
class IndexReport:
    """Outcome of :func:`index_videos`: every input path lands in exactly one list."""

    indexed: list[str] = field(default_factory=list)
    """Decoded now (features, or only the frames of a frame store)."""
    cached: list[str] = field(default_factory=list)
    """Already in the cache (and in the frame store, if one is given): skipped."""
    failed: list[IndexFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    @classmethod
    def combine(cls, reports: Sequence[IndexReport]) -> IndexReport:
        """One report for the shares of several processes that ran at the same time (wall time: the slowest)."""
        return cls(
            indexed=[path for report in reports for path in report.indexed],
            cached=[path for report in reports for path in report.cached],
            failed=[failure for report in reports for failure in report.failed],
            seconds=max((report.seconds for report in reports), default=0.0),
        )

    def summary(self) -> str:
        lines = [
            f"{len(self.indexed)} indexed, {len(self.cached)} already cached, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s"
        ]
        lines += [f"  FAILED {f.path}: {f.error_type}: {f.message}" for f in self.failed]
        return "\n".join(lines)


def index_videos(
    paths: Iterable[str | Path],
    encoder: DualEncoder,
    cache: FeatureCache,
    *,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    batch_size: int = 64,
    threads: int = 0,
    progress: bool | ProgressCallback = False,
    frame_store: FrameStore | None = None,
) -> IndexReport:
    """Index many videos into ``cache``; resumable and robust to bad files.

    Videos already cached are skipped after a fingerprint and an entry check, so rerunning an interrupted job only
    does the remaining work. A video that fails (missing, not a video, corrupt, ...) is recorded in the report
    with its error class and message, and the batch goes on. Problems that would fail every video — the cache
    cannot be written (:class:`CacheError`), the model cannot run (:class:`ModelLoadError`) — stop the batch.

    Args:
        progress: ``True`` for a progress bar (videos, and frames of the current video), or
            ``callback(videos_done, videos_total)``.
        frame_store: also keep each video's candidate frames as JPEGs (see :func:`index_video`); a video whose
            features are cached but whose frames are not is decoded once more for the store.
    """
    _check_sampling(fps, max_frames, batch_size)
    paths = [str(p) for p in paths]
    report = IndexReport()
    started = time.perf_counter()
    # Writability is checked at the first video that needs writing (before decoding it), not here: a read-only
    # cache that already holds every video (a shared, finished index) is fine.
    cache.clean()  # temp files of writes that crashed in an earlier run (a read-only cache keeps them)
    if frame_store is not None:
        frame_store.clean()
    with _batch_progress(progress, len(paths)) as (on_video_done, frame_progress):
        for path in paths:
            try:
                key, cached = _lookup(path, encoder, cache, fps, max_frames)
                decoded = cached is None
                if decoded:
                    cache.ensure_writable()  # fail before minutes of decoding, not after
                    with frame_progress(Path(path).name) as on_frames:
                        features = _compute(path, encoder, fps, max_frames, batch_size, threads, on_frames)
                    if key is not None:
                        cache.put(key, features)
                if frame_store is not None:
                    video_fingerprint = key.fingerprint if key is not None else None
                    stored = _store_frames(
                        frame_store, path, video_fingerprint, fps, max_frames, threads, frame_progress
                    )
                    decoded = decoded or stored
                (report.indexed if decoded else report.cached).append(path)
            except (CacheError, ModelLoadError):
                raise
            except Exception as err:  # one bad video must not stop a dataset-wide job; the report names it
                logger.warning("indexing %s failed: %s: %s", path, type(err).__name__, err)
                report.failed.append(IndexFailure(path, type(err).__name__, str(err)))
            on_video_done()
    report.seconds = time.perf_counter() - started
    return report


# --- internals -----------------------------------------------------------------------------------------------


def _check_sampling(fps: float, max_frames: int, batch_size: int) -> None:
    # Checked up front: on a cache hit candidate_timestamps (which also checks) never runs.
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral) or max_frames < 1:
        raise ValueError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _lookup(
    path: str | Path, encoder: DualEncoder, cache: FeatureCache | None, fps: float, max_frames: int
) -> tuple[CacheKey | None, FrameFeatures | None]:
    """The cache key of this (video, encoder, sampling) and the cached features if present; never decodes."""
    if cache is None:
        return None, None
    key = CacheKey(fingerprint(path), encoder.model_id, encoder.revision, fps, max_frames)
    features = cache.get(key)
    if features is not None:
        # Same content may have been indexed under another path: report the path the caller asked about.
        features.video = _with_path(features.video, str(path))
    return key, features


def _with_path(video: VideoInfo | dict, path: str) -> VideoInfo | dict:
    if isinstance(video, VideoInfo):
        return dataclasses.replace(video, path=path)
    return {**video, "path": path}


def _store_frames(
    frame_store: FrameStore,
    path: str | Path,
    video_fingerprint: str | None,
    fps: float,
    max_frames: int,
    threads: int,
    frame_bar: Callable[[str], AbstractContextManager[ProgressCallback | None]],
) -> bool:
    """Build ``path``'s frame store entry unless a usable one exists; return whether it was built."""
    if frame_store.has(path, fps=fps, max_frames=max_frames, fingerprint=video_fingerprint):
        return False
    with frame_bar(f"{Path(path).name} (frames)") as on_frames:
        frame_store.build(
            path, fps=fps, max_frames=max_frames, threads=threads, fingerprint=video_fingerprint, progress=on_frames
        )
    return True


def _compute(
    path: str | Path,
    encoder: DualEncoder,
    fps: float,
    max_frames: int,
    batch_size: int,
    threads: int,
    on_frames: ProgressCallback | None,
) -> FrameFeatures:
    """Probe, decode at the encoder's resolution and encode, streaming one batch of frames at a time."""
    info = probe(path)
    timestamps = candidate_timestamps(info, fps=fps, max_frames=max_frames)
    total = len(timestamps)
    chunks: list[torch.Tensor] = []
    done = 0
    if on_frames is not None:
        on_frames(0, total)
    for frames in iter_frames(path, timestamps, size=encoder.frame_size, threads=threads, batch_size=batch_size):
        chunks.append(encoder.encode_images(frames, batch_size=batch_size))
        done += len(frames)
        if on_frames is not None:
            on_frames(done, total)
    return FrameFeatures(
        timestamps=timestamps,
        embeddings=torch.cat(chunks),
        video=info,
        model_id=encoder.model_id,
        revision=encoder.revision,
        fps=float(fps),
        max_frames=int(max_frames),
    )


@contextmanager
def _frame_progress(progress: bool | ProgressCallback, name: str) -> Iterator[ProgressCallback | None]:
    """A ``(done, total)`` callback for one video's frames: a rich bar, the user's callback, or nothing."""
    if callable(progress):
        yield progress
    elif progress:
        with progress_bar() as bar:
            task = bar.add_task(f"indexing {name}", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        yield None


@contextmanager
def _batch_progress(
    progress: bool | ProgressCallback, num_videos: int
) -> Iterator[tuple[Callable[[], None], Callable[[str], object]]]:
    """``(on_video_done, frame_progress(name))`` for :func:`index_videos`."""
    videos_done = 0
    if progress is True:
        with progress_bar() as bar:
            videos_task = bar.add_task("videos", total=num_videos)

            def on_video_done() -> None:
                bar.advance(videos_task)

            @contextmanager
            def frame_progress(name: str) -> Iterator[ProgressCallback]:
                task = bar.add_task(f"  {name}", total=None)
                try:
                    yield lambda done, total: bar.update(task, completed=done, total=total)
                finally:
                    bar.remove_task(task)

            yield on_video_done, frame_progress
        return

    def count_video() -> None:
        nonlocal videos_done
        videos_done += 1
        if callable(progress):
            progress(videos_done, num_videos)

    yield count_video, lambda name: nullcontext(None)
