"""Top-K: the K candidates most similar to any query (``topk-z``: on standardised query rows)."""

from __future__ import annotations

import torch

from msjoe.samplers import register_sampler
from msjoe.samplers.base import RowScale, RowScoredSampler, check_similarity
from msjoe.samplers.selection import topk_indices


@register_sampler("topk")
class TopKSampler(RowScoredSampler):
    """The K highest max-over-queries similarities, returned in time order.

    Ties go to the earlier frame, so a constant similarity selects the first K frames. No temporal spread is
    enforced: adjacent frames of one strongly matching event tend to take the whole budget (the failure mode the
    other baselines address).
    """

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        return topk_indices(self.scores(sim), k)


@register_sampler("topk-z")
class StandardisedTopKSampler(TopKSampler):
    """Top-K on standardised query rows: ``TopKSampler(rows="zscore")`` under its own name."""

    def __init__(self, rows: RowScale = "zscore") -> None:
        super().__init__(rows)
