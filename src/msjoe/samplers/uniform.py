"""Uniform sampling: K evenly spaced candidates, the query-free reference every other sampler must beat."""

from __future__ import annotations

import torch

from msjoe.samplers import register_sampler
from msjoe.samplers.base import Sampler, all_frames, check_similarity


def uniform_indices(num_frames: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Centres of ``k`` equal bins over ``num_frames`` candidates: ``floor((i + 1/2) * T / k)`` for ``i < k``.

    Consecutive picks are ``T / k >= 1`` apart before flooring, so the ``min(k, T)`` indices are always distinct.
    Integer arithmetic keeps the result exact for any ``T``.
    """
    if k >= num_frames:
        return all_frames(num_frames, device)
    i = torch.arange(k, dtype=torch.long, device=device)
    return ((2 * i + 1) * num_frames) // (2 * k)


@register_sampler("uniform")
class UniformSampler(Sampler):
    """K evenly spaced candidates, one at the centre of each of K equal bins (ignores the similarity values).

    ``needs_queries = False``: the pipeline can skip query generation. S is still validated so every sampler
    rejects the same bad input.
    """

    needs_queries = False

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        return uniform_indices(sim.shape[1], k, sim.device)
