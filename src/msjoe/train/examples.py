"""The unit of training data: a QA item joined with its video's cached frame features.

Stage 1 also needs the frozen MLLM's queries and their similarity matrix ``sim``; stage 2 writes its own queries
in every rollout and leaves both empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msjoe.cache import FrameFeatures
from msjoe.data.schema import QAItem


@dataclass
class TrainExample:
    """One training item, ready for rollouts."""

    qa: QAItem
    """The question, options, gold letter, difficulty and video path."""
    features: FrameFeatures
    """The video's candidate frames: timestamps ``[T]`` and L2-normalised embeddings ``[T, D]``."""
    queries: tuple[str, ...] = ()
    """Visual queries of the frozen MLLM (stage 1); empty in stage 2."""
    sim: torch.Tensor | None = None
    """Query-frame similarities ``[Nq, T]`` of :attr:`queries` (stage 1); None in stage 2."""

    @property
    def id(self) -> str:
        return self.qa.id

    @property
    def difficulty(self) -> float:
        """The base MLLM's pass rate with uniform frames (stage 1's ``c``); raises if the item has none."""
        if self.qa.difficulty is None:
            raise ValueError(f"item {self.qa.id!r} has no difficulty (needed by stage 1)")
        return float(self.qa.difficulty)

    @property
    def timestamps(self) -> list[float]:
        return [float(t) for t in self.features.timestamps]
