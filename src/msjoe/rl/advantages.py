"""Advantages of stage-2 training, computed from the rewards of a group of G rollouts of one item.

MLLM (paper: GRPO): ``A_i = (r_i - mean(r)) / (std(r) + eps)`` over the group. ``std`` is the *sample* standard
deviation (Bessel's correction, divide by ``G - 1``), as in TRL's ``GRPOTrainer``, which computes
``rewards.view(-1, G).std(dim=1)`` (torch's default, unbiased) and adds ``1e-4``. Ours: ``eps = 1e-6`` by default;
it only guards the division, since a group whose rewards are all equal gets exactly zero advantages here
(explicitly, not through ``0 / eps``: float rounding of the mean would otherwise leave tiny non-zero values).

Sampler (paper): REINFORCE with the rollout's total reward as its advantage (``mode="raw"``); the group-normalised
advantage above (``mode="group"``) is the standard variance-reduced alternative.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

SamplerAdvantageMode = Literal["raw", "group"]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages ``(r - mean) / (std + eps)`` within each group (sample std, ``G - 1`` in the denominator).

    Args:
        rewards: ``[G]`` (one group) or ``[B, G]`` (B groups of G rollouts each), ``G >= 2``.
        eps: added to the standard deviation (``>= 0``).

    Returns:
        Advantages of the shape of ``rewards``, in its floating dtype (the default dtype for integer rewards).
        A group whose rewards are all equal gets zeros: it carries no signal about which rollout was better.
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    values = _float_rewards(rewards)
    if values.ndim not in (1, 2):
        raise ValueError(f"rewards must have shape [G] or [B, G], got shape {tuple(values.shape)}")
    group_size = values.shape[-1]
    if group_size < 2:
        raise ValueError(f"a group needs at least 2 rollouts to normalise rewards within it, got G = {group_size}")
    mean = values.mean(-1, keepdim=True)
    std = values.std(-1, correction=1, keepdim=True)
    tied = (values == values[..., :1]).all(-1, keepdim=True)
    return torch.where(tied, torch.zeros_like(values), (values - mean) / (std + eps))


def sampler_advantages(rewards: torch.Tensor, mode: SamplerAdvantageMode = "raw", eps: float = 1e-6) -> torch.Tensor:
    """The sampler's REINFORCE advantage per rollout.

    Args:
        rewards: total rollout rewards, ``[G]`` or ``[B, G]``.
        mode: ``"raw"`` (paper): the reward itself, no baseline; ``"group"`` (ours, optional): the GRPO
            group-normalised advantage of :func:`group_advantages`, which has a baseline and lower variance.
        eps: passed to :func:`group_advantages` in ``"group"`` mode.
    """
    if mode == "raw":
        return _float_rewards(rewards).clone()
    if mode == "group":
        return group_advantages(rewards, eps=eps)
    raise ValueError(f"mode must be 'raw' or 'group', got {mode!r}")


def _float_rewards(rewards: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(rewards).detach()
    values = values if values.is_floating_point() else values.to(torch.get_default_dtype())
    if not torch.isfinite(values).all():
        raise ValueError(f"rewards must be finite, got {values.tolist()!r}")
    return values
