"""The MLLM interface: a chat of text and images in, text out.

A chat is a list of :class:`Message`; each message's ``content`` is a list of parts, each a ``str`` or an
:class:`ImagePart`. Backends (local transformers, OpenAI-compatible HTTP) turn this into their own format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from msjoe.video import fit_to_pixel_budget

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ImagePart:
    """One RGB frame, ``uint8 [H, W, 3]``.

    ``max_pixels`` caps the image's pixel count as the backend feeds it to the model (preview frames low
    resolution, answer frames full); ``None`` leaves the backend's default.
    """

    pixels: np.ndarray
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        shape, dtype = getattr(self.pixels, "shape", None), getattr(self.pixels, "dtype", None)
        if not isinstance(self.pixels, np.ndarray) or self.pixels.ndim != 3 or shape[2] != 3 or dtype != np.uint8:
            raise ValueError(f"ImagePart.pixels must be a uint8 numpy array [H, W, 3], got {dtype} {shape}")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ValueError(f"ImagePart.max_pixels must be positive or None, got {self.max_pixels}")

    def resized(self, multiple: int = 1) -> np.ndarray:
        """The pixels resized to fit ``max_pixels`` (see :func:`fit_to_pixel_budget`), aspect ratio kept.

        ``multiple`` is the model's resize granularity (28 for Qwen2-VL/2.5-VL: 14-pixel patches merged 2x2);
        snapping to it here means the model's processor keeps the size as is instead of rounding it up.
        Returns ``pixels`` itself when ``max_pixels`` is ``None`` or nothing needs to change.
        """
        if self.max_pixels is None:
            return self.pixels
        height, width = self.pixels.shape[:2]
        new_height, new_width = fit_to_pixel_budget(height, width, self.max_pixels, multiple)
        if (new_height, new_width) == (height, width):
            return self.pixels
        image = Image.fromarray(self.pixels).resize((new_width, new_height), Image.Resampling.BICUBIC)
        return np.array(image)  # a writable copy: torch warns on read-only arrays


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


@dataclass(frozen=True)
class OptionScores:
    """The model's first-token distribution over the option letters of an answer turn.

    Attributes:
        probabilities: letter -> probability, renormalised over the letters (sums to 1).
        letter_mass: the probability, before renormalising, that the reply starts with one of these letters: low
            values mean the prompt does not elicit a bare letter and the renormalised figures say little.
    """

    probabilities: dict[str, float]
    letter_mass: float


class MLLM(ABC):
    """A multimodal chat model. Usable as a context manager (``close`` on exit)."""

    name: ClassVar[str]

    @abstractmethod
    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        """Return the assistant's reply text to ``messages``."""

    def chat_many(self, chats: Sequence[list[Message]], generation: GenerationConfig | None = None) -> list[str]:
        """Replies to several independent chats, in input order.

        This default answers them one after another; backends override it to batch or to run requests
        concurrently. With a ``seed``, every chat is sampled as if it were sent alone with that seed.
        """
        return [self.chat(messages, generation) for messages in chats]

    def option_probabilities(self, messages: list[Message], letters: Sequence[str]) -> OptionScores:
        """How likely the reply to ``messages`` starts with each of ``letters`` (one forward pass, no decoding).

        Stage 1 can use the gold letter's probability as an expected reward (``Stage1Config.reward``). Backends
        that cannot read the model's next-token distribution raise ``NotImplementedError``.
        """
        raise NotImplementedError(
            f"the {type(self).__name__} backend cannot score option letters; use the reward 'correct' with it"
        )

    def option_probabilities_many(
        self, chats: Sequence[list[Message]], letters: Sequence[Sequence[str]]
    ) -> list[OptionScores]:
        """:meth:`option_probabilities` of several chats (``letters[i]`` for ``chats[i]``), in order. This default
        scores them one after another; backends override it to batch or to send requests concurrently."""
        if len(chats) != len(letters):
            raise ValueError(f"one letter list per chat is needed, got {len(letters)} for {len(chats)} chats")
        return [
            self.option_probabilities(messages, chat_letters)
            for messages, chat_letters in zip(chats, letters, strict=True)
        ]

    def check(self) -> None:
        """Raise now if the backend cannot answer at all, before a long run starts. The default does nothing: a
        local model that loaded can answer; a server backend sends a tiny request."""
        return None

    def close(self) -> None:
        """Release held resources (e.g. HTTP connections). The default holds none."""
        return None

    def __enter__(self) -> MLLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def require_option_probabilities(mllm: MLLM, why: str) -> None:
    """Raise ``ValueError`` (naming ``why`` it is needed) when ``mllm``'s backend cannot score option letters."""
    if type(mllm).option_probabilities is MLLM.option_probabilities:
        raise ValueError(
            f"{why} needs the model's next-token probabilities, which the {type(mllm).__name__} backend does not "
            "give; use the transformers backend or an OpenAI-compatible server with top_logprobs"
        )
