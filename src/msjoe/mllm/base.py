"""The MLLM interface: a chat of text and images in, text out.

A chat is a list of :class:`Message`; each message's ``content`` is a list of parts, each a ``str`` or an
:class:`ImagePart`. Backends (local transformers, OpenAI-compatible HTTP) turn this into their own format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ImagePart:
    """One RGB frame, ``uint8 [H, W, 3]``.

    ``max_pixels`` caps the image's pixel count as the backend feeds it to the model (preview frames low
    resolution, answer frames full); ``None`` leaves the backend's default.
    """

    pixels: np.ndarray
    max_pixels: int | None = None


Part = str | ImagePart


@dataclass(frozen=True)
class Message:
    role: Role
    content: list[Part] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling parameters shared by every backend.

    Attributes:
        max_new_tokens: upper bound on generated tokens.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass (used only when ``temperature > 0``).
        seed: makes sampling reproducible where the backend supports it.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class MLLM(ABC):
    """A multimodal chat model."""

    name: ClassVar[str]

    @abstractmethod
    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        """Return the assistant's reply text to ``messages``."""
