"""BOLT (Liu et al., CVPR 2025): inverse-transform sampling of a sharpened similarity distribution.

Frames are picked at fixed quantiles of ``p ∝ normalise(s)^alpha``, so the budget concentrates where the query
matches while every stretch with some mass can still receive frames. Reference implementation:
``inverse_transform_sampling`` in github.com/sming256/BOLT (``select_frames.py``).
"""

from __future__ import annotations

from typing import Literal

import torch

from msjoe.samplers import register_sampler
from msjoe.samplers.base import Sampler, all_frames, check_similarity
from msjoe.samplers.selection import quantile_indices, quantile_levels

QuantileRule = Literal["bolt", "midpoint"]


def bolt_probabilities(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``p = s'^alpha / sum(s'^alpha)`` with ``s' = (s - min) / (max - min)``, in float64.

    A constant ``s`` (``max == min``) has no ranking to sharpen; it maps to the uniform distribution instead of
    dividing by zero (the reference code would produce NaN there).
    """
    s = scores.detach().double()
    spread = s.max() - s.min()
    if spread <= 0:
        return torch.full_like(s, 1.0 / s.numel())
    sharpened = ((s - s.min()) / spread) ** alpha
    return sharpened / sharpened.sum()


def bolt_levels(k: int, rule: QuantileRule = "bolt") -> torch.Tensor:
    """Quantile levels at which the CDF is inverted.

    ``"bolt"``: the paper's ``linspace(1/k, 1 - 1/k, k)`` for ``k >= 3``. That formula degenerates for small
    budgets (``k = 1`` gives the level 1, i.e. the last frame with mass; ``k = 2`` gives ``[0.5, 0.5]``, one frame
    twice), so ``k <= 2`` uses the midpoint levels ``(i + 1/2) / k`` (the median for ``k = 1``; the quartiles
    for ``k = 2``). ``"midpoint"``: ``(i + 1/2) / k`` for every ``k``.
    """
    if rule == "midpoint" or k <= 2:
        return quantile_levels(k)
    return torch.linspace(1.0 / k, 1.0 - 1.0 / k, k, dtype=torch.float64)


@register_sampler("bolt")
class BoltSampler(Sampler):
    """BOLT inverse-transform sampling over the max-over-queries similarity.

    Args:
        alpha: Sharpening power applied after min-max normalisation. Paper range 2.5–3; the reference scripts use
            3 for VideoMME and MLVU and 2.5 for LongVideoBench. Default 2.5. Larger values approach top-K;
            ``alpha = 0`` gives the uniform distribution.
        quantiles: ``"bolt"`` (default; the paper's ``linspace(1/k, 1 - 1/k, k)``, midpoints for ``k <= 2``) or
            ``"midpoint"`` (``(i + 1/2) / k``). See :func:`bolt_levels`.

    Two quantiles can land on the same frame when its mass exceeds ``1/k``. The reference code keeps such
    repeats (the MLLM sees the frame twice); here a repeated pick is replaced by the nearest unused frame, the
    more probable one on an equal distance (:func:`msjoe.samplers.selection.replace_duplicates`), so exactly
    ``min(k, T)`` distinct frames come back. Only the ranking of similarities matters: adding a constant to S or
    scaling it by a positive factor leaves the choice unchanged.
    """

    def __init__(self, alpha: float = 2.5, quantiles: QuantileRule = "bolt") -> None:
        if not alpha >= 0:
            raise ValueError(f"BOLT alpha must be >= 0, got {alpha!r}")
        if quantiles not in ("bolt", "midpoint"):
            raise ValueError(f"BOLT quantiles must be 'bolt' or 'midpoint', got {quantiles!r}")
        self.alpha = float(alpha)
        self.quantiles: QuantileRule = quantiles

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        num_frames = sim.shape[1]
        if k >= num_frames:
            return all_frames(num_frames, sim.device)
        probs = bolt_probabilities(sim.max(dim=0).values, self.alpha)
        return quantile_indices(probs, k, bolt_levels(k, self.quantiles)).to(sim.device)

    def probabilities(self, sim: torch.Tensor) -> torch.Tensor:
        """``p`` whose quantiles :meth:`select` picks (float64, on CPU)."""
        return bolt_probabilities(check_similarity(sim, 1).max(dim=0).values, self.alpha).cpu()

    def __repr__(self) -> str:
        return f"BoltSampler(alpha={self.alpha}, quantiles={self.quantiles!r})"
