"""Cached model replies: what a reply depends on (model, prompt version, question, video) and the append-only
cache that stores replies keyed by it.

Shared by training (:mod:`msjoe.train.data`'s query writer, :mod:`msjoe.train.answerer`) and by
``msjoe data calibrate`` (:mod:`msjoe.data.calibrate`): an answer computed by one is found by the other, since both
key it with :func:`answer_key`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from msjoe.atomic import KeyedJsonlLog
from msjoe.cache import fingerprint, key_digest
from msjoe.data.schema import QAItem
from msjoe.features import folder_revision
from msjoe.mllm import MLLM
from msjoe.mllm.base import Message
from msjoe.mllm.prompts import MAX_QUERIES, answer_prompt, query_prompt

__all__ = [
    "ReplyCache",
    "VideoFingerprints",
    "answer_key",
    "describe_mllm",
    "prompt_version",
    "question_digest",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# What a cached model reply depends on
# --------------------------------------------------------------------------------------------------------------
def describe_mllm(mllm: MLLM) -> str:
    """A stable name of the model behind ``mllm``, for cache keys of its replies.

    Local folders get :func:`msjoe.features.folder_revision` appended (names, sizes and mtimes of the files), so a
    checkpoint rewritten in place (e.g. after fine-tuning) does not reuse the old model's replies. A hub id names
    its weights only up to the revision; served models (HTTP) are named by the served model name. Pass an explicit
    ``model_id`` to the caches when neither is precise enough.
    """
    model_id = getattr(mllm, "model_id", None)
    if isinstance(model_id, str):
        folder = Path(model_id).expanduser()
        if folder.is_dir():
            return f"{folder.resolve()}@{folder_revision(folder)}"
        return model_id
    served = getattr(mllm, "model", None)  # HTTPMLLM: the served model name (a property that may ask the server)
    if isinstance(served, str):
        return f"{getattr(mllm, 'name', type(mllm).__name__)}:{served}"
    return type(mllm).__qualname__


def prompt_version(kind: Literal["query", "answer"]) -> str:
    """A digest of the prompt text of one MLLM turn, rendered for a fixed probe input.

    Cached replies are keyed by it, so editing the wording of :mod:`msjoe.mllm.prompts` (or the timestamp labels)
    invalidates them automatically instead of silently reusing replies to another prompt.
    """
    probe = np.zeros((28, 28, 3), dtype=np.uint8)
    if kind == "query":
        messages = query_prompt("<question>", ["<option a>", "<option b>"], [probe], [0.0], max_queries=MAX_QUERIES)
    elif kind == "answer":
        messages = answer_prompt("<question>", ["<option a>", "<option b>"], [probe], [0.0])
    else:
        raise ValueError(f"kind must be 'query' or 'answer', got {kind!r}")
    return f"{kind}-{hashlib.sha256(_render(messages).encode()).hexdigest()[:12]}"


def _render(messages: Sequence[Message]) -> str:
    return json.dumps([[m.role, [p if isinstance(p, str) else "<image>" for p in m.content]] for m in messages])


def question_digest(item: QAItem) -> str:
    """A digest of the question and options: an edited question must not reuse replies to the old one."""
    return hashlib.sha256(json.dumps([item.question, list(item.options)]).encode()).hexdigest()[:16]


class VideoFingerprints:
    """Memoised :func:`msjoe.cache.fingerprint` of video files (re-read only when a file's size or mtime changes).

    Cache keys of replies need the video's content fingerprint on every call (thousands of rollouts per video);
    fingerprinting reads 3 MiB, a ``stat`` costs microseconds.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, str]] = {}

    def __call__(self, path: str | Path) -> str:
        """The fingerprint of ``path``; raises :class:`~msjoe.errors.VideoNotFoundError` if it is missing."""
        name = str(path)
        try:
            stat = os.stat(name)
        except OSError:
            return fingerprint(name)  # raises VideoNotFoundError naming the path
        known = self._known.get(name)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        value = fingerprint(name)
        self._known[name] = (stat.st_size, stat.st_mtime_ns, value)
        return value


class ReplyCache:
    """Model replies keyed by what they depend on, kept in an append-only JSONL file (one record a line).

    Each record is a JSON object with a ``"key"`` (a digest of the inputs, see :meth:`key`) and whatever the
    caller stores (the reply, the parse, the inputs in readable form for inspection). :meth:`put` appends one line
    with a single ``write`` on an ``O_APPEND`` descriptor: once it returns, the record survives a crash of the
    process (not a power loss: records are not fsynced, since a lost record only costs one model call again).

    Loading tolerates damage, because a cache entry is only ever a saved model call: a last line without its
    newline (a crash mid-write) is kept when it is a whole record and cut off otherwise; any other unreadable line
    is skipped. Both are logged as warnings. Later records of a key supersede earlier ones.

    One writing process per file: under ``accelerate``, give each rank its own file (the items are sharded per
    rank anyway), since a rank repairing a torn last line could cut another rank's append. ``also_read`` names
    other processes' files to read as well, never to repair or write (a torn last line there is ignored).

    With ``path=None`` the cache lives in memory only (for one run). The file is a
    :class:`msjoe.atomic.KeyedJsonlLog` (not durable, not strict).
    """

    def __init__(self, path: str | Path | None, also_read: Sequence[str | Path] = ()) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._log = KeyedJsonlLog(self.path, key="key", what="cache", redo="that reply will be asked again")
        others = [Path(other).expanduser() for other in also_read]
        self._log.read_other([other for other in others if other != self.path and other.is_file()])

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        return self._log.records

    @property
    def skipped_lines(self) -> int:
        return self._log.skipped_lines

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    @staticmethod
    def key(fields: Mapping[str, Any]) -> str:
        """The digest naming a record: SHA-256 of the canonical JSON of ``fields``."""
        return key_digest(dict(fields))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` under ``key`` in memory and append it to the file."""
        self._log.write([{"key": key, **record}])


def answer_key(
    item: QAItem,
    *,
    video_fingerprint: str,
    chosen_timestamps: Sequence[float],
    model: str,
    frame_max_pixels: int,
    max_new_tokens: int,
    prompt: str,
    sampling: Mapping[str, Any] | None = None,
    scoring: str | None = None,
) -> str:
    """The cache key of one answer of ``model`` to ``item`` shown the frames at ``chosen_timestamps`` (seconds,
    sorted; none for a blind answer).

    Greedy answers (``sampling=None``) are keyed exactly as stage 1's answerer keys them, so an answer cache is
    shared between ``msjoe data calibrate`` and training. A sampled answer is keyed with its sampling settings and
    seed (``{"temperature": ..., "top_p": ..., "seed": ...}``): with a fixed seed the draw is a function of the
    inputs too, and a resumed calibration replays it instead of drawing again. ``scoring`` names a record that is
    not a decoded reply (``"option_probabilities"``: the letters' probabilities), so the two never share a key.
    """
    fields: dict[str, Any] = {
        "id": item.id,
        "source": item.source,
        "question": question_digest(item),
        "video_fingerprint": video_fingerprint,
        "chosen_timestamps": [round(float(t), 3) for t in chosen_timestamps],
        "model": model,
        "frame_max_pixels": frame_max_pixels,
        "max_new_tokens": max_new_tokens,
        "prompt": prompt,
    }
    if sampling is not None:
        fields["sampling"] = dict(sampling)
    if scoring is not None:
        fields["scoring"] = scoring
    return ReplyCache.key(fields)
