"""Background indexing: a bounded queue of jobs run one at a time by a worker thread, with progress.

Bounded so that a burst of registrations cannot pile up hours of work: a full queue answers 503 and the client
retries. One worker, because indexing is bound by decoding and the encoder, which a second worker would only
share. Jobs live in memory (ids are not kept across restarts); what a job produced (cached features, the video's
state in the registry) is on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from msjoe.serve.errors import Busy

logger = logging.getLogger(__name__)

KEPT_FINISHED_JOBS = 1000


@dataclass
class Job:
    """One indexing job. ``done``/``total`` count candidate frames once decoding starts."""

    video_id: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued, running, done, failed
    done: int = 0
    total: int | None = None
    cached: bool | None = None  # True when the features were already in the cache (nothing decoded)
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def to_dict(self) -> dict[str, Any]:
        fraction = 1.0 if self.state == "done" else (self.done / self.total if self.total else 0.0)
        return {
            "id": self.id,
            "video_id": self.video_id,
            "state": self.state,
            "progress": {"done": self.done, "total": self.total, "fraction": round(fraction, 4)},
            "cached": self.cached,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
        }


class JobQueue:
    """A FIFO of at most ``capacity`` waiting jobs, run by one worker thread with ``run(job)``.

    ``run`` reports progress through ``job.progress`` and raises on failure; its message becomes ``job.error``.
    """

    def __init__(self, run: Callable[[Job], None], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._run = run
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=capacity)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> Job:
        """Queue ``job``; :class:`Busy` when the queue is full."""
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise Busy(f"the indexing queue is full ({self.capacity} videos waiting); retry later") from None
            self._jobs[job.id] = job
            self._forget_old()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="msjoe-index", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the running job finish (up to ``timeout``) and stop; queued jobs are dropped (their videos are
        queued again at the next start, see :class:`~msjoe.serve.service.VideoService`)."""
        if self._worker is None:
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._worker.join(timeout)
        self._worker = None

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            job.state = "running"
            try:
                self._run(job)
                job.state = "done"
            except Exception as error:  # a job's failure is its state, never the worker's end
                logger.warning("indexing job %s failed: %s: %s", job.id, type(error).__name__, error)
                job.error = str(error) or type(error).__name__
                job.state = "failed"
            job.finished = time.time()

    def _forget_old(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.finished is not None]
        for key in finished[: max(0, len(finished) - KEPT_FINISHED_JOBS)]:
            del self._jobs[key]
