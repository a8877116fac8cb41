"""The service without HTTP: register and index videos, answer questions, remember both.

:class:`VideoService` ties the pieces together (the app in :mod:`msjoe.serve.app` only translates HTTP):

- models load once (a :class:`~msjoe.pipeline.VideoQA` built before the server starts) and each is used by one
  thread at a time (:mod:`msjoe.serve.models`);
- indexing runs in the background through a bounded queue (:mod:`msjoe.serve.jobs`) and fills the ordinary
  feature cache, so a restart, or any ``msjoe`` command with the same cache, finds the features again;
- answers and their explain views are kept on disk (:mod:`msjoe.serve.store`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from msjoe import video as video_io
from msjoe.cache import CacheKey, fingerprint
from msjoe.checks import AT_LEAST_1, check_fields
from msjoe.errors import MsjoeError, VideoError, VideoNotFoundError
from msjoe.index import index_video
from msjoe.mllm.http_backend import HTTPMLLM
from msjoe.pipeline import VideoQA
from msjoe.samplers import MAX_QUERIES, available_samplers
from msjoe.serve.errors import BadRequest, Conflict, NotAVideo, ServiceError, TooLarge
from msjoe.serve.jobs import Job, JobQueue
from msjoe.serve.models import LockedEncoder, LockedMLLM
from msjoe.serve.paths import VIDEO_SUFFIXES, VideoRoots
from msjoe.serve.store import AnswerStore, VideoEntry, VideoRegistry

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("~/.cache/msjoe/serve")
MAX_OPTIONS = 10
MAX_K = 256


@dataclass
class ServeConfig:
    """Settings of :class:`VideoService` (the models and the pipeline settings come with its ``VideoQA``).

    Attributes:
        video_roots: folders whose videos clients may register by (root name, relative path).
        state_dir: where the registry, past answers and uploads are kept.
        max_upload_bytes: uploads larger than this are refused (413) while streaming, before they fill the disk.
        queue_size: videos that may wait for indexing; beyond, registrations are refused (503) until it drains.
        max_answers_listed: at most this many past answers in ``GET /api/answers``.
    """

    video_roots: list[str | Path] = field(default_factory=list)
    state_dir: str | Path = DEFAULT_STATE_DIR
    max_upload_bytes: Annotated[int, AT_LEAST_1] = 2 << 30
    queue_size: Annotated[int, AT_LEAST_1] = 16
    max_answers_listed: Annotated[int, AT_LEAST_1] = 200

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation


class VideoService:
    """Register videos (a path under a root, or an upload), index them in the background, answer questions."""

    def __init__(self, qa: VideoQA, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        self.qa = qa
        # One model, one thread at a time (see msjoe.serve.models); VideoQA holds no per-request state.
        if not isinstance(qa.encoder, LockedEncoder):
            qa.encoder = LockedEncoder(qa.encoder)  # type: ignore[assignment]
        if not isinstance(qa.mllm, LockedMLLM | HTTPMLLM):
            qa.mllm = LockedMLLM(qa.mllm)
        self.roots = VideoRoots(list(self.config.video_roots))
        state = Path(self.config.state_dir).expanduser()
        self.uploads = state / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.videos = VideoRegistry(state / "videos.json")
        self.answers = AnswerStore(state / "answers")
        self.jobs = JobQueue(self._index, self.config.queue_size)
        self._register_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the indexing worker and queue again the registered videos whose features are not cached (a
        restart during indexing resumes; a cached video is ready at once)."""
        self.jobs.start()
        for entry in self.videos.all():
            if entry.state == "failed":
                continue
            try:
                cached = self._cache_key(Path(entry.path)) in self.qa.cache
            except VideoNotFoundError:
                self.videos.update(entry.id, state="failed", error="the video file is gone")
                continue
            if cached and entry.state == "indexed":
                continue
            try:
                job = self.jobs.submit(Job(entry.id))
                self.videos.update(entry.id, state="queued", job=job.id, error=None)
            except MsjoeError:
                logger.warning("video %s not queued again at start: the queue is full", entry.name)

    def stop(self) -> None:
        self.jobs.stop()

    # --- videos -------------------------------------------------------------------------------------------------
    def register_path(self, relative: str, root: str | None = None) -> tuple[VideoEntry, Job | None]:
        """Register a video under an allowed root and queue its indexing (nothing queued if already indexed)."""
        found_root, path = self.roots.resolve(relative, root)
        self._check_container(path, relative)
        name = f"{found_root.name}/{path.relative_to(found_root.path).as_posix()}"
        return self._register(path, name, "root")

    async def receive_upload(self, filename: str, chunks: AsyncIterator[bytes], declared_length: int | None) -> Path:
        """Stream an upload into a temporary file under the size limit (refused as soon as it is exceeded, or at
        once when the declared length is too large); return the file for :meth:`register_upload`."""
        suffix = Path(safe_upload_name(filename)).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise NotAVideo(f"upload a video file ({', '.join(sorted(VIDEO_SUFFIXES))}), got {filename!r}")
        limit = self.config.max_upload_bytes
        if declared_length is not None and declared_length > limit:
            raise TooLarge(f"the upload is {declared_length} bytes; the limit is {limit}")
        fd, tmp_name = tempfile.mkstemp(dir=self.uploads, prefix=".upload-", suffix=suffix)
        tmp = Path(tmp_name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as file:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"the upload is larger than the limit of {limit} bytes")
                    file.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def register_upload(self, tmp: Path, filename: str) -> tuple[VideoEntry, Job | None]:
        """Check that a received upload is a video (a known container that FFmpeg opens, with a frame), keep it
        under a name derived from its content, and register it; the temporary file is gone afterwards."""
        name = safe_upload_name(filename)
        try:
            if tmp.stat().st_size == 0:
                raise NotAVideo("the upload is empty")
            self._check_container(tmp, name)
            try:
                video_io.probe(tmp)
            except VideoError as error:
                raise NotAVideo(f"{name} is not a readable video: {str(error).replace(str(tmp), name)}") from None
            final = self.uploads / f"{fingerprint(tmp)[:16]}{tmp.suffix}"
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            return self._register(final, f"upload/{name}", "upload")
        except ServiceError:  # refused (queue full): keep no file nobody registered
            if self.videos.find(final.stem) is None:
                final.unlink(missing_ok=True)
            raise

    @staticmethod
    def _check_container(path: Path, shown: str) -> None:
        """Only known video containers reach FFmpeg: a playlist or other text format could make it open other
        files or URLs (the service fetches nothing)."""
        if video_io.sniff_container(path) is None:
            raise NotAVideo(f"{shown} is not a video container msjoe accepts (MP4/MOV, Matroska/WebM, AVI, ...)")

    def _register(self, path: Path, name: str, source: str) -> tuple[VideoEntry, Job | None]:
        with self._register_lock:  # two registrations of one new video must queue one job
            return self._register_locked(path, name, source)

    def _register_locked(self, path: Path, name: str, source: str) -> tuple[VideoEntry, Job | None]:
        video_id = fingerprint(path)[:16]
        existing = self.videos.find(video_id)
        if existing is not None and existing.state in ("queued", "indexing"):
            return existing, self.jobs.get(existing.job) if existing.job else None
        entry = existing or VideoEntry(id=video_id, name=name, path=str(path), source=source)
        entry.path = str(path)  # the file may have moved; the content is the same
        if existing is not None and existing.state == "indexed" and self._cache_key(path) in self.qa.cache:
            return existing, None
        job = self.jobs.submit(Job(video_id))
        entry.state, entry.job, entry.error = "queued", job.id, None
        self.videos.put(entry)
        return entry, job

    def _cache_key(self, path: Path) -> CacheKey:
        cfg = self.qa.config
        return CacheKey(fingerprint(path), self.qa.encoder.model_id, self.qa.encoder.revision, cfg.fps, cfg.max_frames)

    def _index(self, job: Job) -> None:
        """The worker's task: features into the cache (and the frame store when configured)."""
        entry = self.videos.get(job.video_id)
        path = Path(entry.path)
        self.videos.update(entry.id, state="indexing")
        cfg = self.qa.config
        try:
            job.cached = self._cache_key(path) in self.qa.cache
            features = index_video(
                path,
                self.qa.encoder,  # type: ignore[arg-type]  (the locked wrapper)
                self.qa.cache,
                fps=cfg.fps,
                max_frames=cfg.max_frames,
                progress=job.progress,
                frame_store=self.qa.frame_store if cfg.store_frames else None,
            )
        except Exception as error:
            self.videos.update(entry.id, state="failed", error=self.roots.redact(str(error)))
            raise
        info = features.video_info
        self.videos.update(
            entry.id,
            state="indexed",
            candidates=features.num_frames,
            duration=None if info is None else round(info.duration, 3),
        )
        job.progress(features.num_frames, features.num_frames)

    # --- questions ----------------------------------------------------------------------------------------------
    def ask(
        self,
        video_id: str,
        question: str,
        options: list[str],
        *,
        k: int | None = None,
        sampler: str | None = None,
        explain: bool = True,
    ) -> dict[str, Any]:
        """Answer ``question`` about a registered, indexed video; returns the stored answer record (the JSON of
        ``msjoe ask --json`` plus ``id``, ``video_id``, ``created`` and ``explain_url``)."""
        entry = self.videos.get(video_id)
        if entry.state != "indexed":
            job = self.jobs.get(entry.job) if entry.job else None
            detail = f"; job {job.id}: {job.to_dict()['progress']['fraction']:.0%}" if job else ""
            reason = f"indexing failed: {entry.error}" if entry.state == "failed" else f"it is {entry.state}{detail}"
            raise Conflict(f"video {video_id} cannot be asked about yet: {reason}")
        question = question.strip()
        if not question:
            raise BadRequest("the question is empty")
        if len(options) > MAX_OPTIONS or any(not option.strip() for option in options):
            raise BadRequest(f"give 0 to {MAX_OPTIONS} non-empty options")
        sampler = sampler or self.qa.config.sampler
        if sampler not in available_samplers():
            raise BadRequest(f"unknown sampler {sampler!r}; choose one of: {', '.join(available_samplers())}")
        checkpoint = self.qa.config.sampler_checkpoint if sampler == "usampler" else None
        if sampler == "usampler" and checkpoint is None:
            raise BadRequest("this server has no U-Sampler weights (start it with --sampler-checkpoint)")
        if k is not None and not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be 1 to {MAX_K}, got {k}")
        try:
            answer = self.qa.ask(
                entry.path, question, options or None, k=k, sampler=sampler, sampler_checkpoint=checkpoint
            )
        except VideoNotFoundError:
            self.videos.update(entry.id, state="failed", error="the video file is gone")
            raise Conflict(f"video {video_id}'s file is gone; register it again") from None
        answer_id = self.answers.new_id()
        record = {
            **answer.to_dict(),
            "video": entry.name,
            "id": answer_id,
            "video_id": entry.id,
            "created": time.time(),
            "explain_url": f"/api/answers/{answer_id}/explain" if explain else None,
        }
        html = None
        if explain:
            view = answer.explain()
            view.load_thumbnails()  # decoded from the server's file; the page then shows the video's public name
            view.video = entry.name
            html = view.to_html()
        self.answers.save(answer_id, record, html)
        return record

    # --- listings -----------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "models": dict(self.qa.model_names),
            "sampler": self.qa.config.sampler,
            "samplers": available_samplers(),
            "k": self.qa.config.k,
            "max_queries": MAX_QUERIES,
            "queue": {"pending": self.jobs.pending, "capacity": self.jobs.capacity},
            "videos": len(self.videos.all()),
            "max_upload_bytes": self.config.max_upload_bytes,
            "roots": [root.name for root in self.roots.roots],
        }

    def video_json(self, entry: VideoEntry) -> dict[str, Any]:
        data = entry.public()
        job = self.jobs.get(entry.job) if entry.job else None
        data["progress"] = job.to_dict()["progress"] if job else None
        return data


def safe_upload_name(filename: str) -> str:
    """A display name for an uploaded file: its last path component, printable characters only."""
    name = Path(filename.replace("\\", "/")).name
    return re.sub(r"[^\w.\- ]", "_", name)[:120] or "upload"
