"""Pure selection rules over per-frame scores: stochastic (training) and deterministic (inference).

Stochastic: :func:`gumbel_topk` draws K frames *without replacement* from ``p = softmax(logits)``; adding
Gumbel noise and taking the top K is exactly sequential sampling without replacement, and the draw order is the
order of the perturbed scores. Two log-probabilities of a draw are offered:

- :func:`plackett_luce_log_prob`: the exact log-probability of the ordered draw,
  ``sum_k [l_{x_k} - logsumexp(l over frames not yet drawn)]``;
- :func:`independent_log_prob`: the paper's REINFORCE term ``sum_k log p(x_k)`` (ignores the renormalisation
  after each draw).

Deterministic: :func:`topk_indices`, :func:`topk_nms` (top-K with temporal non-maximum suppression) and
:func:`quantile_indices` (inverse-CDF sampling at fixed quantiles, BOLT's rule). Every function returning a set
of frames returns distinct indices sorted by time.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Estimator = Literal["plackett_luce", "independent"]
"""How a draw's log-probability is computed: :func:`plackett_luce_log_prob` or :func:`independent_log_prob`."""
ESTIMATORS: tuple[Estimator, ...] = ("plackett_luce", "independent")


def gumbel_topk(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``min(k, T)`` distinct indices from ``softmax(logits)``; returned in *draw order*."""
    k = min(k, logits.numel())
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    # -log(-log U) with U in (0, 1]; clamp keeps U = 0 from producing +inf.
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    perturbed = logits.detach().double() + gumbel
    return torch.topk(perturbed, k).indices


def plackett_luce_log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Exact log-probability of drawing ``order`` (in that order) without replacement from ``softmax(logits)``.

    Differentiable in ``logits``; ``order`` holds distinct indices. Cost O(T + K).
    """
    chosen = logits[order]
    # The mass still available before draw k is (frames never drawn) + (draws k, k+1, ...): a sum of positive
    # terms, taken in log space. Writing it as "total minus the earlier draws" cancels catastrophically once one
    # frame dominates (float32 logits [20, 0, 0, 0], order [0, 1] gave log P = +67 instead of log(1/3)).
    later_draws = torch.logcumsumexp(chosen.flip(0), dim=0).flip(0)
    if order.numel() == logits.numel():
        return (chosen - later_draws).sum()
    never_drawn = torch.ones_like(logits, dtype=torch.bool)
    never_drawn[order] = False
    available = torch.logaddexp(later_draws, torch.logsumexp(logits[never_drawn], dim=0))
    return (chosen - available).sum()


def independent_log_prob(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The paper's surrogate ``sum_k log p(x_k)`` with ``p = softmax(logits)``. Differentiable in ``logits``."""
    return torch.log_softmax(logits, dim=-1)[indices].sum()


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``min(k, T)`` highest-scoring frames, sorted by time. Ties go to the earlier frame."""
    k = min(k, scores.numel())
    # A stable descending sort makes ties deterministic (earlier frame first) on every device.
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def topk_nms(scores: torch.Tensor, k: int, radius: int) -> torch.Tensor:
    """Greedy top-K with temporal non-maximum suppression.

    Takes frames in descending score; a frame within ``radius`` candidates of one already taken is skipped.
    When suppression leaves fewer than K frames, the best skipped frames fill the budget, so exactly
    ``min(k, T)`` frames always come back.
    """
    num_frames = scores.numel()
    k = min(k, num_frames)
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    blocked = torch.zeros(num_frames, dtype=torch.bool)
    taken: list[int] = []
    skipped: list[int] = []
    for i in order:
        if len(taken) == k:
            break
        if blocked[i]:
            skipped.append(i)
            continue
        taken.append(i)
        blocked[max(0, i - radius) : i + radius + 1] = True
    # Fill-up: the best suppressed frames, then the frames the loop never reached (already in score order).
    taken += (skipped + order[len(taken) + len(skipped) :])[: k - len(taken)]
    return torch.sort(torch.tensor(taken, dtype=torch.long, device=scores.device)).values


def quantile_levels(k: int) -> torch.Tensor:
    """Midpoint quantiles ``(i + 1/2) / k``: evenly spaced mass, defined for every ``k >= 1``."""
    return (torch.arange(k, dtype=torch.float64) + 0.5) / k


def quantile_indices(probs: torch.Tensor, k: int, levels: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF selection: frame ``i`` is chosen for each level ``u`` with ``cdf[i-1] < u <= cdf[i]``.

    Frames with more probability mass receive more levels. Repeated picks are replaced by the nearest frame not
    yet chosen (the more probable neighbour on a tie), so exactly ``min(k, T)`` distinct frames come back.
    """
    num_frames = probs.numel()
    k = min(k, num_frames)
    if levels is None:
        levels = quantile_levels(k)
    p = probs.detach().double().cpu().clamp_min(0)
    if not p.sum() > 0:  # no mass anywhere: every frame is equally likely (BOLT's fallback), not a NaN CDF
        p = torch.ones_like(p)
    cdf = torch.cumsum(p / p.sum(), 0)
    picks = torch.searchsorted(cdf, levels[:k].double(), right=False).clamp_max(num_frames - 1).tolist()
    return torch.sort(torch.tensor(replace_duplicates(picks, p), dtype=torch.long, device=probs.device)).values


def replace_duplicates(picks: list[int], scores: torch.Tensor) -> list[int]:
    """Replace repeated indices by the nearest unused index (higher score first on an equal distance)."""
    num_frames = scores.numel()
    used: set[int] = set()
    result = []
    for i in picks:
        if i in used:
            for distance in range(1, num_frames):
                near = [j for j in (i - distance, i + distance) if 0 <= j < num_frames and j not in used]
                if near:
                    i = max(near, key=lambda j: (float(scores[j]), -j))
                    break
        used.add(i)
        result.append(i)
    return result


def default_nms_radius(num_frames: int, k: int) -> int:
    """Suppression radius that still lets K frames fit: a quarter of the average gap between K even picks."""
    return max(0, math.floor(num_frames / (4 * k)))
