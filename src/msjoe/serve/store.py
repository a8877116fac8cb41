"""What the service remembers across restarts, under its state folder: the registered videos and past answers.

    <state>/videos.json             the registry: id, display name, server path, state (rewritten atomically)
    <state>/answers/<id>.json       one answer each: the same JSON as `msjoe ask --json`, plus id and time
    <state>/answers/<id>.html       its explain view
    <state>/uploads/<id><suffix>    uploaded videos, named by content

Features are not here: they are in the feature cache, keyed by content, so a restarted service (or any other
msjoe command using the same cache) finds them again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msjoe.atomic import write_text_atomically
from msjoe.serve.errors import NotFound

logger = logging.getLogger(__name__)

_ANSWER_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class VideoEntry:
    """A registered video. ``id`` is derived from the content, so registering a file twice gives one entry."""

    id: str
    name: str  # what clients see: "<root>/<relative path>" or "upload/<file name>"
    path: str  # the server path; never sent to clients
    source: str  # "root" or "upload"
    state: str = "queued"  # queued, indexing, indexed, failed
    job: str | None = None
    error: str | None = None
    candidates: int | None = None
    duration: float | None = None
    registered: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["path"]
        return data


class VideoRegistry:
    """The registered videos, kept in ``videos.json`` (each change rewrites it atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._videos: dict[str, VideoEntry] = {}
        if path.is_file():
            try:
                for record in json.loads(path.read_text(encoding="utf-8")):
                    entry = VideoEntry(**record)
                    self._videos[entry.id] = entry
            except (ValueError, TypeError) as error:  # never lose the service to a damaged registry
                broken = path.with_suffix(f".broken-{int(time.time())}.json")
                path.replace(broken)
                logger.error("video registry %s was unreadable (%s); moved to %s, starting empty", path, error, broken)

    def get(self, video_id: str) -> VideoEntry:
        with self._lock:
            entry = self._videos.get(video_id)
        if entry is None:
            raise NotFound(f"no video {video_id!r}; GET /api/videos lists them")
        return entry

    def find(self, video_id: str) -> VideoEntry | None:
        with self._lock:
            return self._videos.get(video_id)

    def all(self) -> list[VideoEntry]:
        with self._lock:
            return sorted(self._videos.values(), key=lambda entry: entry.registered)

    def put(self, entry: VideoEntry) -> None:
        with self._lock:
            self._videos[entry.id] = entry
            self._save()

    def update(self, video_id: str, **changes: Any) -> VideoEntry:
        with self._lock:
            entry = self._videos[video_id]
            for key, value in changes.items():
                setattr(entry, key, value)
            self._save()
            return entry

    def _save(self) -> None:
        records = [asdict(entry) for entry in self._videos.values()]
        write_text_atomically(self.path, json.dumps(records, indent=1) + "\n")


class AnswerStore:
    """Past answers and their explain views, one file each (ids are random hex: safe as file names)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def _path(self, answer_id: str, suffix: str) -> Path:
        if not _ANSWER_ID.match(answer_id):
            raise NotFound(f"no answer {answer_id!r}")
        return self.folder / f"{answer_id}{suffix}"

    def save(self, answer_id: str, record: dict[str, Any], explain_html: str | None) -> None:
        if explain_html is not None:
            write_text_atomically(self._path(answer_id, ".html"), explain_html)
        write_text_atomically(self._path(answer_id, ".json"), json.dumps(record, ensure_ascii=False))

    def get(self, answer_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(answer_id, ".json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(f"no answer {answer_id!r}") from None

    def explain_html(self, answer_id: str) -> str:
        try:
            return self._path(answer_id, ".html").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"answer {answer_id!r} has no explain view") from None

    def summaries(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` answers, without their similarity matrices."""
        paths = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
        result = []
        for path in paths:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            keep = ("id", "created", "video", "video_id", "question", "options", "letter", "status", "reply",
                    "queries", "chosen_timestamps", "sampler", "k", "explain_url")  # fmt: skip
            result.append({key: record.get(key) for key in keep})
        return result
