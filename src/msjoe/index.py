"""Indexing: a video's candidate frames -> cached frame embeddings (the first, query-independent stage).

Indexing is the expensive part of answering a question about a long video (decoding ~3600 frames and running the
image tower on each) and does not depend on the question, so its result is cached per (video content, encoder
checkpoint, fps, frame cap). A second question about the same video reads one file and decodes nothing::

    encoder = DualEncoder.from_pretrained(DEFAULT_CLIP)
    cache = FeatureCache()                                  # $MSJOE_CACHE or ~/.cache/msjoe/features
    features = index_video("talk.mp4", encoder, cache)     # FrameFeatures: timestamps [T], embeddings [T, D]
    report = index_videos(paths, encoder, cache, progress=True, workers=4)   # a whole dataset, resumable

With ``frame_store=FrameStore.for_cache(cache)`` (what ``msjoe index`` and :class:`~msjoe.pipeline.VideoQA` pass by
default) indexing also keeps every candidate frame as a JPEG at the store's size, made from the same decoding pass
as the encoder's input (each decoded frame is scaled twice), so questions read their preview and key frames from
the store instead of seeking in the video (see :mod:`msjoe.frame_store`).

Parallel decoding (``workers >= 1``): the candidates of each video are cut into segments of whole encoder batches,
decoded (and JPEG-encoded for the store) by that many worker processes (:mod:`msjoe.decode_worker`), and encoded
here, batch by batch as they arrive, while the workers go on decoding. A bounded queue keeps at most ``2 x workers``
batches of frames in memory; the store's JPEGs are written in candidate order as soon as their predecessors are, so
only batches that arrive early wait. The result equals sequential indexing exactly: the same frames in the same
encoder batches, the same cache and store entries. A bad video is reported by its own path and error, and the others
are indexed: whether it fails in this process (probing), in a worker (decoding), or kills its worker process (then
the video fails with :class:`~msjoe.errors.DecoderCrashedError` and the unfinished others are decoded again). A
worker that dies between videos (e.g. killed for lack of memory while idle) fails nothing: the unfinished videos are
decoded again by a full set of new workers. Workers dying :data:`MAX_DEATHS_WITHOUT_PROGRESS` times in a row with no
segment decoded in between stop the indexing with :class:`~msjoe.errors.DecodingWorkersDiedError` (finished videos
stay cached: a rerun resumes). Messages are read off the result queue in a thread, so a worker killed part-way
through writing one cannot leave this process waiting forever for its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msjoe import decode_worker
from msjoe.cache import CacheKey, FeatureCache, FrameFeatures, fingerprint
from msjoe.checks import check_int, check_sampling
from msjoe.errors import CacheError, DecoderCrashedError, DecodingWorkersDiedError, ModelLoadError
from msjoe.features import DualEncoder
from msjoe.frame_store import EntryWriter, FrameStore, FrameStoreKey, encode_jpegs
from msjoe.progress import progress_bar
from msjoe.video import (
    DEFAULT_FPS,
    DEFAULT_MAX_FRAMES,
    VideoInfo,
    candidate_timestamps,
    iter_frames_at_sizes,
    probe,
)

MAX_DEATHS_WITHOUT_PROGRESS = 3
"""Decoding workers dying this many times in a row, with no segment decoded in between, stop the indexing: a cause
that new workers would meet again (memory too short for this many workers), not one bad video."""

__all__ = [
    "MAX_DEATHS_WITHOUT_PROGRESS",
    "IndexFailure",
    "IndexReport",
    "default_workers",
    "index_video",
    "index_videos",
    "worker_segments",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` after each step (frames for one video, videos for a batch)."""

MAX_DEFAULT_WORKERS = 8
"""Decoding processes beyond this rarely help: the image encoder (or the disk) becomes the bound."""


def default_workers() -> int:
    """Decoding processes ``msjoe index`` uses by default: half the cores (FFmpeg threads use the rest), 1 to 8."""
    return max(1, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) // 2))


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
    workers: int = 0,
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
        threads: decoder threads (0: one per core; with ``workers``, the cores shared among the workers).
        progress: ``True`` for a progress bar on the terminal, or ``callback(frames_done, frames_total)``.
        frame_store: also keep the candidate frames as JPEGs for later questions, unless already stored (also on a
            feature cache hit, which then decodes the video once for the store alone). On a miss, the frames come
            from the same decoding pass as the encoder's input.
        workers: decode in this many worker processes, segments of the video in parallel (0: in this process).

    Raises:
        msjoe.errors.VideoError subclasses: the video is missing, not a video, empty, corrupt, ...
        CacheError: the cache or frame store directory cannot be written (checked before any decoding).
    """
    _check_sampling(fps, max_frames, batch_size)
    _check_workers(workers, threads)
    job = _plan(0, path, encoder, cache, frame_store, fps, max_frames)
    if not job.needs_decoding:
        return job.features
    _ensure_writable([job], cache, frame_store)  # fail before minutes of decoding, not after
    with _frame_progress(progress, Path(path).name) as on_frames:
        if workers:
            outcome = _Indexer(encoder, cache, frame_store, batch_size, threads, on_frames).run([job], workers)[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return _index_in_process(job, encoder, cache, frame_store, batch_size, threads, on_frames)


def worker_segments(
    path: str | Path,
    encoder: DualEncoder,
    *,
    workers: int,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    batch_size: int = 64,
    threads: int = 0,
    frame_store: FrameStore | None = None,
) -> list[decode_worker.Segment]:
    """The segments :func:`index_video` with ``workers`` hands its decoding processes for ``path``: frames at the
    encoder's size, plus the frame store's JPEGs when ``frame_store`` is given, in runs of whole batches.

    For timing decoding alone, as the workers do it (:func:`msjoe.decode_worker.count_frames` on each segment,
    in that many processes), or for looking at the split. Probes the video; decodes nothing. ``threads``: FFmpeg
    threads per segment (0: the cores shared among the workers, as indexing does).
    """
    _check_sampling(fps, max_frames, batch_size)
    _check_workers(workers, threads)
    check_int("workers", workers, minimum=1)
    job = _Job(0, str(path), fps, max_frames)
    job.prepare()
    if frame_store is not None:
        job.store_key = frame_store.key(path, fps=fps, max_frames=max_frames)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    return _Indexer(encoder, None, frame_store, batch_size, threads, None)._segments(job, workers, threads)


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
    workers: int = 0,
) -> IndexReport:
    """Index many videos into ``cache``; resumable and robust to bad files.

    Videos already cached are skipped after a fingerprint and an entry check, so rerunning an interrupted job only
    does the remaining work (each video's entry is written as soon as its last batch is encoded). A video that fails
    (missing, not a video, corrupt, ...) is recorded in the report with its error class and message, and the batch
    goes on. Problems that would fail every video — the cache cannot be written (:class:`CacheError`), the model
    cannot run (:class:`ModelLoadError`) — stop the batch.

    Args:
        progress: ``True`` for a progress bar (videos, and frames), or ``callback(videos_done, videos_total)``.
        frame_store: also keep each video's candidate frames as JPEGs (see :func:`index_video`); a video whose
            features are cached but whose frames are not is decoded once more for the store.
        workers: decoding processes (0: decode in this process, one video after the other); see the module notes.
            :func:`default_workers` is what ``msjoe index`` uses.
    """
    _check_sampling(fps, max_frames, batch_size)
    _check_workers(workers, threads)
    paths = [str(p) for p in paths]
    report = IndexReport()
    started = time.perf_counter()
    # Writability is checked at the first video that needs writing (before decoding it), not here: a read-only
    # cache that already holds every video (a shared, finished index) is fine.
    cache.clean()  # temp files of writes that crashed in an earlier run (a read-only cache keeps them)
    if frame_store is not None:
        frame_store.clean()

    def record(path: str, outcome: Outcome, decoded: bool) -> None:
        if isinstance(outcome, CacheError | ModelLoadError):
            raise outcome
        if isinstance(outcome, BaseException):
            logger.warning("indexing %s failed: %s: %s", path, type(outcome).__name__, outcome)
            report.failed.append(IndexFailure(path, type(outcome).__name__, str(outcome)))
        else:
            (report.indexed if decoded else report.cached).append(path)

    with _batch_progress(progress, len(paths)) as (on_video_done, frame_progress):
        jobs: list[_Job] = []
        for index, path in enumerate(paths):
            job = _try_plan(index, path, encoder, cache, frame_store, fps, max_frames)
            if isinstance(job, BaseException) or not job.needs_decoding:
                record(path, job if isinstance(job, BaseException) else job.features, decoded=False)
                on_video_done()
            elif workers:
                jobs.append(job)  # decoded together below
            else:
                try:
                    _ensure_writable([job], cache, frame_store)  # fail before minutes of decoding, not after
                    with frame_progress(Path(path).name) as on_frames:
                        outcome = _index_in_process(job, encoder, cache, frame_store, batch_size, threads, on_frames)
                except (CacheError, ModelLoadError):
                    raise
                except Exception as error:  # one bad video must not stop a dataset-wide job; the report names it
                    outcome = error
                record(path, outcome, decoded=True)
                on_video_done()
        if jobs:
            _ensure_writable(jobs, cache, frame_store)
            with frame_progress(f"{len(jobs)} videos") as on_frames:
                indexer = _Indexer(encoder, cache, frame_store, batch_size, threads, on_frames)

                def on_done(job: _Job, outcome: Outcome) -> None:
                    record(job.path, outcome, decoded=True)
                    on_video_done()

                indexer.on_video_done = on_done
                indexer.run(jobs, workers)
    report.seconds = time.perf_counter() - started
    return report


# --- internals -----------------------------------------------------------------------------------------------


def _check_sampling(fps: float, max_frames: int, batch_size: int) -> None:
    # Checked up front: on a cache hit candidate_timestamps (which also checks) never runs.
    check_sampling(fps, max_frames)
    check_int("batch_size", batch_size, minimum=1)


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


def _check_workers(workers: int, threads: int) -> None:
    for name, value in (("workers", workers), ("threads", threads)):
        check_int(name, value, minimum=0)


@dataclass
class _Job:
    """One video to index: what is cached, what must be built, and (once probed) its candidates."""

    index: int
    path: str
    fps: float
    max_frames: int
    key: CacheKey | None = None
    features: FrameFeatures | None = None
    """The cached features (None: to compute)."""
    store_key: FrameStoreKey | None = None
    """The frame store entry to build (None: not wanted, or already there)."""
    info: VideoInfo | None = None
    timestamps: np.ndarray | None = None

    @property
    def needs_decoding(self) -> bool:
        return self.features is None or self.store_key is not None

    def prepare(self) -> None:
        """Probe the video and compute its candidate times (once)."""
        if self.info is None:
            self.info = probe(self.path)
            self.timestamps = candidate_timestamps(self.info, fps=self.fps, max_frames=self.max_frames)


def _plan(
    index: int,
    path: str | Path,
    encoder: DualEncoder,
    cache: FeatureCache | None,
    frame_store: FrameStore | None,
    fps: float,
    max_frames: int,
) -> _Job:
    """What indexing ``path`` takes: looks the features and the frames up; never decodes."""
    key, features = _lookup(path, encoder, cache, fps, max_frames)
    job = _Job(index, str(path), fps, max_frames, key, features)
    if frame_store is not None:
        store_key = frame_store.key(
            path, fps=fps, max_frames=max_frames, fingerprint=key.fingerprint if key is not None else None
        )
        if not frame_store.has(path, fps=fps, max_frames=max_frames, fingerprint=store_key.fingerprint):
            job.store_key = store_key
    return job


def _try_plan(*args: object) -> _Job | Exception:
    """:func:`_plan`, with a bad video's error returned rather than raised (batch-wide problems still raise)."""
    try:
        return _plan(*args)
    except (CacheError, ModelLoadError):
        raise
    except Exception as error:
        return error


def _ensure_writable(jobs: Sequence[_Job], cache: FeatureCache | None, frame_store: FrameStore | None) -> None:
    if cache is not None and any(job.features is None for job in jobs):
        cache.ensure_writable()
    if frame_store is not None and any(job.store_key is not None for job in jobs):
        frame_store.ensure_writable()


def _finish(job: _Job, embeddings: torch.Tensor, encoder: DualEncoder, cache: FeatureCache | None) -> FrameFeatures:
    """The features of a decoded job, stored in the cache when there is one (and returned as stored)."""
    features = FrameFeatures(
        timestamps=job.timestamps,
        embeddings=embeddings,
        video=job.info,
        model_id=encoder.model_id,
        revision=encoder.revision,
        fps=float(job.fps),
        max_frames=int(job.max_frames),
    )
    if cache is not None and job.key is not None:
        features = cache.put(job.key, features)
    job.features = features
    return features


def _index_in_process(
    job: _Job,
    encoder: DualEncoder,
    cache: FeatureCache | None,
    frame_store: FrameStore | None,
    batch_size: int,
    threads: int,
    on_frames: ProgressCallback | None,
) -> FrameFeatures:
    """Probe, then one decoding pass at the encoder's size (and the store's), encoding one batch at a time."""
    job.prepare()
    total = len(job.timestamps)
    encode = job.features is None
    sizes = ([encoder.frame_size] if encode else []) + ([frame_store.frame_size(job.info)] if job.store_key else [])
    chunks: list[torch.Tensor] = []
    writing = frame_store.writing(job.store_key, job.info, job.timestamps) if job.store_key else nullcontext()
    with writing as entry:
        done = 0
        if on_frames is not None:
            on_frames(0, total)
        for decoded in iter_frames_at_sizes(job.path, job.timestamps, sizes, threads=threads, batch_size=batch_size):
            if encode:
                chunks.append(encoder.encode_images(decoded[0], batch_size=batch_size))
            if entry is not None:
                entry.add(encode_jpegs(decoded[-1], frame_store.quality))
            done += len(decoded[0])
            if on_frames is not None:
                on_frames(done, total)
    return _finish(job, torch.cat(chunks), encoder, cache) if encode else job.features


Outcome = FrameFeatures | BaseException


@dataclass
class _Progress:
    """What the parallel indexer holds of one job while its batches arrive."""

    job: _Job
    segments_left: int
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)
    pending_jpegs: dict[int, list[bytes]] = field(default_factory=dict)
    next_jpeg_batch: int = 0
    frames_done: int = 0
    entry: EntryWriter | None = None
    entry_stack: contextlib.ExitStack | None = None
    outcome: Outcome | None = None


class _Indexer:
    """Decodes jobs in worker processes and encodes (and writes) their batches here as they arrive."""

    def __init__(
        self,
        encoder: DualEncoder,
        cache: FeatureCache | None,
        frame_store: FrameStore | None,
        batch_size: int,
        threads: int,
        on_frames: ProgressCallback | None,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self.frame_store = frame_store
        self.batch_size = batch_size
        self.threads = threads
        self.on_frames = on_frames
        self.on_video_done: Callable[[_Job, Outcome], None] | None = None
        self._frames_done = self._frames_total = 0
        self._segments_done = 0  # segments decoded to their end, over every round: progress despite dying workers

    def run(self, jobs: Sequence[_Job], workers: int) -> list[Outcome]:
        """Index ``jobs`` with ``workers`` decoding processes; one outcome (features or the error) per job.

        A worker that dies while decoding a video (FFmpeg crashing on a damaged file, the out-of-memory killer)
        fails that video alone, with :class:`DecoderCrashedError`. The dead process may have left the shared
        result queue unusable (its lock held, a message cut short), so the round stops, and the videos not
        finished yet are decoded again from their start in a new round, with new processes and queues.

        A worker that dies between videos fails nothing: the round stops the same way (the dead process may have
        held the task queue's lock) and the next one starts a full set of workers. After
        :data:`MAX_DEATHS_WITHOUT_PROGRESS` deaths with no segment decoded in between, raises
        :class:`DecodingWorkersDiedError` rather than starting workers forever."""
        states: list[_Progress] = []
        for job in jobs:
            state = _Progress(job, 0)
            states.append(state)
            try:
                job.prepare()
            except (CacheError, ModelLoadError):
                raise
            except Exception as error:  # a bad video: reported, the others go on
                self._settle(state, error)
        self._report_frames(0)
        pending = [state for state in states if state.outcome is None]
        deaths: list[str] = []  # since a segment was last decoded to its end
        while pending:
            segments_done_before = self._segments_done
            crash = self._run_round(pending, workers)
            if crash is None:
                break
            crashed, exitcode = crash
            if self._segments_done > segments_done_before:
                deaths.clear()
            deaths.append(_exit_reason(exitcode) + (f" decoding {crashed.job.path}" if crashed else " between videos"))
            for state in pending:  # their frames are decoded again in the next round
                if state is not crashed and state.outcome is None:
                    self._restart(state)
            if crashed is not None:
                self._settle(
                    crashed,
                    DecoderCrashedError(
                        f"{crashed.job.path}: the process decoding it died ({_exit_reason(exitcode)}): FFmpeg "
                        "crashed on this file, or memory ran out (then rerun with fewer --workers)"
                    ),
                )
            if len(deaths) >= MAX_DEATHS_WITHOUT_PROGRESS:
                raise DecodingWorkersDiedError(
                    f"decoding worker processes died {len(deaths)} times in a row with no progress "
                    f"({'; '.join(deaths)}): memory ran out (rerun with fewer --workers, or --workers 0) or FFmpeg "
                    "crashes on these files; finished videos are cached, a rerun resumes"
                )
            pending = [state for state in pending if state.outcome is None]
        return [state.outcome for state in states]

    def _run_round(self, states: list[_Progress], workers: int) -> tuple[_Progress | None, int] | None:
        """Decode ``states``' jobs until each is settled (None), or until a worker dies: then ``(the state of the
        job it was decoding, or None if it was idle or that job is already settled, exit code)``."""
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
        tasks = context.Queue()
        results = context.Queue(maxsize=2 * workers)  # bounds the frames in flight
        # FFmpeg's own threads: the cores shared among the workers (0 would give each worker one per core).
        threads = self.threads or max(1, (os.cpu_count() or 1) // workers)
        num_segments = 0
        for state in states:
            segments = self._segments(state.job, workers, threads)
            state.segments_left = len(segments)
            self._frames_total += len(state.job.timestamps)
            for segment in segments:
                tasks.put(segment)
            num_segments += len(segments)
        by_job = {state.job.index: state for state in states}
        busy = [context.Value("q", decode_worker.IDLE, lock=False) for _ in range(min(workers, num_segments))]
        processes = [
            context.Process(
                target=decode_worker.run, args=(tasks, results, marker), daemon=True, name=f"msjoe-decode-{i}"
            )
            for i, marker in enumerate(busy)
        ]
        finished = False
        reader: _ResultReader | None = None
        try:
            with decode_worker.without_main_module():
                for process in processes:
                    process.start()
            reader = _ResultReader(results)
            while any(state.outcome is None for state in states):
                for process, marker in zip(processes, busy, strict=True):
                    if process.exitcode not in (None, 0):
                        if marker.value == decode_worker.IDLE:  # between videos: nothing to blame it on
                            return None, process.exitcode
                        crashed = by_job[marker.value]
                        return (crashed if crashed.outcome is None else None), process.exitcode
                message = reader.next_message(timeout=1.0)
                if message is not None:
                    self._handle(message, by_job[message[1]])
            finished = True
        finally:
            for state in states:
                if state.outcome is None:
                    self._abort_entry(state, RuntimeError("indexing stopped"))
            if finished:
                for _ in processes:
                    tasks.put(None)
            for process in processes:
                if not finished:
                    process.terminate()
                process.join(timeout=10.0)
                if process.is_alive():
                    process.kill()
                    process.join()
            if reader is not None:
                reader.stop()  # every worker is gone: its read ends (see _ResultReader)
            tasks.cancel_join_thread()
            results.cancel_join_thread()
        return None

    def _restart(self, state: _Progress) -> None:
        """Forget what arrived of an unfinished job (its store entry is already aborted), for a new round."""
        self._frames_total -= len(state.job.timestamps)
        self._frames_done -= state.frames_done
        state.frames_done = 0
        state.embeddings.clear()
        state.pending_jpegs.clear()
        state.next_jpeg_batch = 0

    def _segments(self, job: _Job, workers: int, threads: int) -> list[decode_worker.Segment]:
        """The job's batches in ``workers`` runs of whole batches (fewer for short videos)."""
        num_batches = math.ceil(len(job.timestamps) / self.batch_size)
        per_segment = math.ceil(num_batches / workers)
        store_size = self.frame_store.frame_size(job.info) if job.store_key is not None else None
        segments = []
        for index, first in enumerate(range(0, num_batches, per_segment)):
            begin, end = first * self.batch_size, (first + per_segment) * self.batch_size
            segments.append(
                decode_worker.Segment(
                    job=job.index,
                    index=index,
                    path=job.path,
                    timestamps=job.timestamps[begin:end],
                    first_batch=first,
                    batch_size=self.batch_size,
                    encoder_size=self.encoder.frame_size if job.features is None else False,
                    store_size=store_size,
                    quality=self.frame_store.quality if self.frame_store is not None else 0,
                    threads=threads,
                )
            )
        return segments

    def _handle(self, message: tuple, state: _Progress) -> None:
        kind = message[0]
        if state.outcome is not None:
            return  # the job already failed: the rest of its segments is dropped
        if kind == decode_worker.FAILED:
            self._settle(state, message[2])
        elif kind == decode_worker.FRAMES:
            _, _, batch, frames, jpegs = message
            if frames is not None:
                state.embeddings[batch] = self.encoder.encode_images(frames, batch_size=self.batch_size)
            if jpegs is not None:
                self._add_jpegs(state, batch, jpegs)
            count = len(frames) if frames is not None else len(jpegs)
            state.frames_done += count
            self._report_frames(count)
        elif kind == decode_worker.SEGMENT_DONE:
            self._segments_done += 1
            state.segments_left -= 1
            if state.segments_left == 0:
                self._complete(state)

    def _add_jpegs(self, state: _Progress, batch: int, jpegs: list[bytes]) -> None:
        """Write the store's JPEGs in candidate order: a batch that arrives early waits for its predecessors."""
        if state.entry is None:
            state.entry_stack = contextlib.ExitStack()
            state.entry = state.entry_stack.enter_context(
                self.frame_store.writing(state.job.store_key, state.job.info, state.job.timestamps)
            )
        state.pending_jpegs[batch] = jpegs
        while state.next_jpeg_batch in state.pending_jpegs:
            state.entry.add(state.pending_jpegs.pop(state.next_jpeg_batch))
            state.next_jpeg_batch += 1

    def _complete(self, state: _Progress) -> None:
        job = state.job
        if state.entry_stack is not None:
            state.entry_stack.close()  # finishes the entry and renames it into place
        if job.features is None:
            embeddings = torch.cat([state.embeddings[b] for b in sorted(state.embeddings)])
            _finish(job, embeddings, self.encoder, self.cache)
        self._settle(state, job.features)

    def _abort_entry(self, state: _Progress, error: BaseException) -> None:
        if state.entry_stack is not None:
            stack, state.entry_stack, state.entry = state.entry_stack, None, None
            stack.__exit__(type(error), error, error.__traceback__)  # removes the temp file

    def _settle(self, state: _Progress, outcome: Outcome) -> None:
        if isinstance(outcome, BaseException):
            self._abort_entry(state, outcome)
        state.outcome = outcome
        state.embeddings.clear()
        state.pending_jpegs.clear()
        if self.on_video_done is not None:
            self.on_video_done(state.job, outcome)

    def _report_frames(self, count: int) -> None:
        self._frames_done += count
        if self.on_frames is not None:
            self.on_frames(self._frames_done, self._frames_total)


class _ResultReader:
    """Takes the workers' messages off the result queue in a thread, so that this process never blocks in a read.

    A worker killed part-way through writing a message (a batch of frames is megabytes) leaves it cut short in the
    pipe, and the lock other workers need to write: a ``results.get`` here would then wait forever for the rest,
    with no chance to notice the dead worker. The thread may block so; :meth:`next_message` waits at most its
    timeout. This process gives up its own write end of the queue (it never writes there), so once the round's
    workers are all gone, the thread's read ends (end of file) whatever state the queue is in."""

    def __init__(self, results: Any) -> None:
        results._writer.close()  # the children hold their copies; no public way to drop the parent's
        self._results = results
        self._inbox: queue.Queue[tuple] = queue.Queue(maxsize=1)  # one message ahead: memory stays bounded
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, name="msjoe-decode-results", daemon=True)
        self._thread.start()

    def next_message(self, timeout: float) -> tuple | None:
        """The next message, or None when none came within ``timeout`` seconds."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        """Stop reading; call once the workers are gone (then the read in progress, if any, ends)."""
        self._stopped.set()
        self._thread.join(timeout=10.0)

    def _read(self) -> None:
        while not self._stopped.is_set():
            try:
                message = self._results.get()
            except (EOFError, OSError):  # every worker is gone
                return
            while not self._stopped.is_set():
                try:
                    self._inbox.put(message, timeout=0.1)
                    break
                except queue.Full:
                    continue


def _exit_reason(exitcode: int | None) -> str:
    """``"exit code 3"``, or the signal that killed the process (``"killed by SIGSEGV"``)."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


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
