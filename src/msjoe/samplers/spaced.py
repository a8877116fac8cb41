"""``nms-z``: the U-Sampler's prior read through its policy, with no network.

An untrained U-Sampler scores each frame by its max-over-queries z-score (the similarity prior) plus a small learned
correction, and reads the scores greedily through the policy it is trained with: K picks, each the best frame not
within ``floor(f · T / K)`` candidates of an earlier pick (:mod:`msjoe.samplers.policy`). This sampler is that
reading without the correction. It needs no checkpoint, and it is the bar that shows what training adds: the trained
U-Sampler minus ``nms-z`` is what REINFORCE learned beyond the prior (bench/RESULTS.md, "Simulator family").
"""

from __future__ import annotations

import torch

from msjoe.samplers import policy, register_sampler
from msjoe.samplers.base import RowScale, RowScoredSampler, all_frames, check_similarity


@register_sampler("nms-z")
class SpacedTopKSampler(RowScoredSampler):
    """Greedy top-K of the standardised max-over-queries score, each pick suppressing its neighbours.

    The width scales with the budget, ``floor(suppression · T / K)`` candidates on each side of a pick, so the
    same rule spreads an hour-long video at K = 8 and keeps adjacent frames of one event apart at K = 64. Ties
    go to the earlier frame.

    Args:
        rows: ``"zscore"`` (default, the U-Sampler's prior) or ``"raw"`` cosines.
        suppression: the fraction ``f`` of the even spacing ``T / K`` suppressed on each side of a pick (the
            U-Sampler's default; 0 is plain top-K).
    """

    def __init__(self, rows: RowScale = "zscore", suppression: float = policy.DEFAULT_SUPPRESSION) -> None:
        super().__init__(rows)
        policy.suppression_width(1, 1, suppression)  # refuses a bad fraction now, not at the first question
        self.suppression = suppression

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        num_frames = sim.shape[1]
        if k >= num_frames:
            return all_frames(num_frames, sim.device)
        width = policy.suppression_width(num_frames, k, self.suppression)
        picks = policy.greedy(self.scores(sim), k, width)
        return torch.sort(picks).values.to(sim.device)
