"""Top-K: the K candidates most similar to any query (``topk-z``: on standardised query rows)."""

from __future__ import annotations

import torch

from msjoe.samplers import register_sampler
from msjoe.samplers.base import RowScale, Sampler, check_similarity, frame_scores
from msjoe.samplers.selection import topk_indices


@register_sampler("topk")
class TopKSampler(Sampler):
    """The K highest max-over-queries similarities, returned in time order.

    Ties go to the earlier frame, so a constant similarity selects the first K frames. No temporal spread is
    enforced: adjacent frames of one strongly matching event tend to take the whole budget (the failure mode the
    other baselines address).

    Args:
        rows: ``"raw"`` takes the max of the cosines; ``"zscore"`` standardises each query row first (see
            :func:`~msjoe.samplers.base.frame_scores`).
    """

    def __init__(self, rows: RowScale = "raw") -> None:
        frame_scores(torch.zeros(1, 1), rows)  # refuses an unknown value now, not at the first question
        self.rows: RowScale = rows

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        return topk_indices(frame_scores(sim, self.rows), k)


@register_sampler("topk-z")
class StandardisedTopKSampler(TopKSampler):
    """Top-K on standardised query rows: ``TopKSampler(rows="zscore")`` under its own name."""

    def __init__(self, rows: RowScale = "zscore") -> None:
        super().__init__(rows)
