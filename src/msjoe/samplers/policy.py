"""The U-Sampler's policy: one distribution over K-frame selections, sampled in training and read greedily at
inference.

**The draw.** K frames are picked one after another. Before pick ``j`` the *available* set ``A_j`` holds every frame
that is neither picked nor within ``width`` candidates of an earlier pick; pick ``j`` is one categorical draw from
``softmax(logits)`` restricted to ``A_j``. When suppression has blocked every unpicked frame (only possible once
the picks cover the timeline), ``A_j`` falls back to all unpicked frames, so exactly ``min(K, T)`` distinct frames
always come back.

**The log-probability** of a draw ``x_1 .. x_K`` (in draw order) is exact::

    log P = sum_j [ l_{x_j} - logsumexp(l over A_j) ]

With ``width = 0`` it is the Plackett–Luce probability of sampling without replacement.

**Greedy** (inference) takes the most probable frame of each conditional, ``argmax`` over ``A_j``, with the same
suppression: the same object training samples, read at its per-step modes. With ``width = 0`` this is the exact mode
of the ordered draw (top-K in descending order). With suppression it is the chain of conditional modes, which can
differ from the joint mode (picking a frame blocks its neighbours and so reshapes every later step); finding the
joint mode is a search over ``T^K`` sequences. docs/decisions.md ("One policy") records how often the two agree.

**The width** scales with the budget: ``floor(fraction · T / K)``, a fraction of the even spacing ``T / K``
(:func:`suppression_width`). It is never a constant in candidates, which would suppress nothing in an hour-long
video at K = 8 and whole events in a short one at K = 64.
"""

from __future__ import annotations

import math

import torch

DEFAULT_SUPPRESSION = 0.125
"""The default suppression fraction ``f`` (of the U-Sampler, and of ``nms-z``), chosen among 0.125, 0.25 and 0.5 on
the simulator's validation variants (docs/decisions.md, "One policy")."""


def suppression_width(num_frames: int, k: int, fraction: float) -> int:
    """``floor(fraction · T / K)`` candidates on each side of a pick (0 when ``fraction = 0`` or ``K >= T``)."""
    if num_frames < 1 or k < 1:
        raise ValueError(f"need num_frames >= 1 and k >= 1, got {num_frames} and {k}")
    if not (math.isfinite(fraction) and fraction >= 0):
        raise ValueError(f"suppression fraction must be a finite number >= 0, got {fraction!r}")
    return math.floor(fraction * num_frames / min(k, num_frames))


def draw(logits: torch.Tensor, k: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``min(k, T)`` distinct frames from the policy; returned in *draw order* (no autograd)."""
    return _sequential(logits, k, width, generator, greedy=False)


def greedy(logits: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """The chain of conditional modes (ties go to the earlier frame); returned in pick order."""
    return _sequential(logits, k, width, None, greedy=True)


def available_masks(order: torch.Tensor, num_frames: int, width: int) -> torch.Tensor:
    """``[K, T]`` boolean: row ``j`` is the available set ``A_j`` before pick ``j`` of ``order``."""
    positions = torch.arange(num_frames, device=order.device)
    offsets = positions[None, :] - order[:, None]
    near = offsets.abs() <= width  # [K, T]: the frames each pick blocks (itself included)
    picked = offsets == 0
    # Exclusive running OR over the picks: what the picks before j have blocked / taken.
    blocked_before = torch.zeros_like(near)
    picked_before = torch.zeros_like(picked)
    if order.numel() > 1:
        blocked_before[1:] = near[:-1].int().cumsum(0).bool()
        picked_before[1:] = picked[:-1].int().cumsum(0).bool()
    available = ~blocked_before
    exhausted = ~available.any(dim=1, keepdim=True)
    return torch.where(exhausted, ~picked_before, available)


def log_prob(logits: torch.Tensor, order: torch.Tensor, width: int) -> torch.Tensor:
    """Exact log-probability of the ordered draw ``order`` under the policy; differentiable in ``logits``.

    ``order`` holds distinct frame indices in draw order. A frame drawn inside the suppressed neighbourhood of an
    earlier pick (impossible under this width) raises ``ValueError``: it means the draw came from another policy.
    Cost O(K·T).
    """
    available = available_masks(order, logits.numel(), width)
    steps = torch.arange(order.numel(), device=order.device)
    if not bool(available[steps, order].all()):
        step = int((~available[steps, order]).nonzero()[0])
        raise ValueError(
            f"frame {int(order[step])} (pick {step}) lies within {width} candidates of an earlier pick: this order "
            "was not drawn with this suppression width"
        )
    masked = logits.unsqueeze(0).masked_fill(~available, -math.inf)
    return (logits[order] - torch.logsumexp(masked, dim=1)).sum()


def _sequential(
    logits: torch.Tensor, k: int, width: int, generator: torch.Generator | None, *, greedy: bool
) -> torch.Tensor:
    if width < 0:
        raise ValueError(f"suppression width must be >= 0, got {width}")
    scores = logits.detach().double()
    num_frames = scores.numel()
    k = min(k, num_frames)
    blocked = torch.zeros(num_frames, dtype=torch.bool, device=scores.device)
    picked = torch.zeros_like(blocked)
    order = torch.empty(k, dtype=torch.long, device=scores.device)
    if not greedy:
        # One Gumbel vector per pick: argmax of (logit + Gumbel) over A_j is an exact draw from softmax over A_j.
        uniform = torch.rand((k, num_frames), generator=generator, dtype=torch.float64, device=scores.device)
        noise = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    for j in range(k):
        allowed = ~blocked
        if not bool(allowed.any()):
            allowed = ~picked
        candidate = scores if greedy else scores + noise[j]
        i = int(torch.argmax(candidate.masked_fill(~allowed, -math.inf)))  # argmax: first index on ties
        order[j] = i
        picked[i] = True
        blocked[max(0, i - width) : i + width + 1] = True
    return order
