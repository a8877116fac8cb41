"""Bin-max (TSPO-style): split the timeline into K equal bins and keep the best frame of each.

``binmax-z`` is the same rule on standardised query rows (the fairer bar for the U-Sampler, whose prior reads S
the same way; bench/RESULTS.md "Simulator family").
"""

from __future__ import annotations

from itertools import pairwise

import torch

from msjoe.samplers import register_sampler
from msjoe.samplers.base import RowScale, RowScoredSampler, all_frames, check_similarity


def bin_edges(num_frames: int, num_bins: int) -> list[int]:
    """``num_bins + 1`` edges ``floor(i * T / num_bins)``: bin ``i`` is ``[edge_i, edge_{i+1})``.

    Bin sizes differ by at most one (``floor`` or ``ceil`` of ``T / num_bins``) and none is empty when
    ``num_bins <= T``.
    """
    return [(i * num_frames) // num_bins for i in range(num_bins + 1)]


@register_sampler("binmax")
class BinMaxSampler(RowScoredSampler):
    """One frame per equal time bin: the argmax of the max-over-queries similarity inside each of K bins.

    Guarantees coverage of the whole video (one frame per ``T / K`` stretch) while still following the query
    inside each stretch. Ties inside a bin go to the earlier frame, so a constant similarity gives the first
    frame of every bin.
    """

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        num_frames = sim.shape[1]
        if k >= num_frames:
            return all_frames(num_frames, sim.device)
        scores = self.scores(sim).cpu()
        edges = bin_edges(num_frames, k)
        # torch.argmax returns the first maximal index, which is the tie rule documented above.
        picks = [start + int(torch.argmax(scores[start:end])) for start, end in pairwise(edges)]
        return torch.tensor(picks, dtype=torch.long, device=sim.device)


@register_sampler("binmax-z")
class StandardisedBinMaxSampler(BinMaxSampler):
    """Bin-max on standardised query rows: ``BinMaxSampler(rows="zscore")`` under its own name."""

    def __init__(self, rows: RowScale = "zscore") -> None:
        super().__init__(rows)
