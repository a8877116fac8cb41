"""One model, one user at a time: the encoder and a local MLLM are each guarded by a lock.

The service answers requests on many threads (uvicorn's thread pool) and indexes videos on a worker thread. A
torch model on a GPU or CPU is not meant to run two forward passes from two threads at once (shared CUDA streams,
caches such as the MLLM's prepared-chat memo, and on CPU two thread pools fighting over the cores), so every call
into a model takes that model's lock. The locks are per model, not per request: indexing (image tower) and a
question's text queries (text tower) take turns on the encoder batch by batch, and the MLLM can answer one
question while the encoder embeds another video. Each request keeps its own state in local variables
(:meth:`msjoe.pipeline.VideoQA.ask` holds none between calls), so answers cannot mix.

An HTTP MLLM is not wrapped: the server it talks to schedules concurrent requests itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from msjoe.features import DualEncoder
from msjoe.mllm import MLLM, GenerationConfig
from msjoe.mllm.base import Message


class LockedEncoder:
    """A :class:`~msjoe.features.DualEncoder` whose encode calls run one at a time; everything else is passed
    through (model id, revision, frame size, logit scale)."""

    def __init__(self, encoder: DualEncoder) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()

    def encode_images(self, frames: np.ndarray | Sequence[np.ndarray], *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._lock:
            return self._encoder.encode_images(frames, *args, **kwargs)

    def encode_texts(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._lock:
            return self._encoder.encode_texts(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)


class LockedMLLM(MLLM):
    """A local :class:`~msjoe.mllm.MLLM` whose chats run one at a time."""

    def __init__(self, inner: MLLM) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()

    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        with self._lock:
            return self.inner.chat(messages, generation)

    def chat_many(self, chats: Sequence[list[Message]], generation: GenerationConfig | None = None) -> list[str]:
        with self._lock:
            return self.inner.chat_many(chats, generation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
