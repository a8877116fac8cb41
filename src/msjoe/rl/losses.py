"""Losses of MSJoE training: PPO-clip over the MLLM's own tokens, and REINFORCE for the sampler.

MLLM (paper: GRPO). Per generated token ``t`` of rollout ``i``, with ``ratio = exp(log pi(t) - log pi_old(t))``::

    loss_t = -min(ratio · A_i, clip(ratio, 1 - eps, 1 + eps) · A_i) + beta · KL_t
    KL_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (the k3 estimator of KL(pi || pi_ref), >= 0)

as in the GRPO paper and TRL. Only the MLLM's own tokens count (``mask``): the queries it wrote in the first turn
and the answer in the second, never the prompt, the frames or padding. With ``old_logprobs = logprobs.detach()``
(one update per batch of rollouts) the ratio is 1 and the gradient is REINFORCE's ``-A ∇log pi``.

Aggregation over tokens (ours): one mean over all tokens of the batch, every token weighing the same (DAPO; TRL's
``loss_type="bnpo"``). The GRPO paper's sequence mean (each rollout's tokens, then over rollouts) makes a long
reply's tokens weigh less, so a long *wrong* reply is penalised less per token — the length bias Dr. GRPO and DAPO
point out; MSJoE's replies differ in length (a reply that rambles instead of giving a letter is the failure the
format reward targets). With gradient accumulation or several processes, pass ``num_tokens`` = the token count of
the whole optimiser batch so each micro-batch is scaled alike.

Sampler (paper): ``loss = -A · log P(selected frames)``, averaged over the batch, where ``log P`` is either the
paper's ``sum_k log p(x_k)`` or the exact Plackett–Luce log-probability of the ordered draw (ours, default): the
frames are drawn *without replacement* (Gumbel-top-k), so only the latter is the log-probability of the sampling
process, which makes the REINFORCE gradient unbiased. The two agree when K << T and ``p`` is spread out.
"""

from __future__ import annotations

import math

import torch

from msjoe.samplers import policy
from msjoe.samplers.selection import Estimator, independent_log_prob


def ppo_clip_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate loss over generated tokens, with an optional k3 KL penalty to a reference model.

    Args:
        logprobs: ``[B, L]`` log-probabilities of the sampled tokens under the current policy (differentiable).
        old_logprobs: ``[B, L]`` the same under the policy that generated the rollouts (treated as constants).
        advantages: ``[B]`` one advantage per rollout (GRPO) or ``[B, L]`` per token (treated as constants).
        mask: ``[B, L]`` bool or 0/1: which positions are the MLLM's own tokens. Values at masked-out positions are
            never used, even if they are ``-inf`` or NaN.
        clip_eps: the PPO clip range ``eps`` in ``(0, 1)``.
        ref_logprobs: ``[B, L]`` log-probabilities under the reference model (constants); needed when
            ``kl_beta > 0``, and reported in the stats whenever given.
        kl_beta: weight of the KL penalty (paper: configurable; default 0, no reference model needed).
        num_tokens: the denominator to use instead of this batch's token count (for
            gradient accumulation across micro-batches or processes).

    Returns:
        ``(loss, stats)``: the scalar loss, and detached statistics over the masked tokens: ``clip_fraction`` (the
        fraction of tokens whose gradient the clip removes: ``ratio > 1 + eps`` with ``A > 0``, or
        ``ratio < 1 - eps`` with ``A < 0``), ``ratio_mean``, and ``kl_mean`` when ``ref_logprobs`` is given.
    """
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must have shape [B, L], got shape {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    for name, tensor in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have the shape of logprobs {shape}, got {tuple(tensor.shape)}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must have shape [B] = {shape[:1]} or [B, L] = {shape}, got {tuple(advantages.shape)}"
        )
    if not (0 < clip_eps < 1):
        raise ValueError(f"clip_eps must lie in (0, 1), got {clip_eps!r}")
    if not (math.isfinite(kl_beta) and kl_beta >= 0):
        raise ValueError(f"kl_beta must be a finite number >= 0, got {kl_beta!r}")
    if kl_beta > 0 and ref_logprobs is None:
        raise ValueError(f"kl_beta = {kl_beta} needs ref_logprobs (the reference model's token log-probabilities)")

    own = mask.bool() if mask.dtype != torch.bool else mask
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Replace masked positions *before* any arithmetic: a -inf or NaN there would otherwise turn into NaN
    # gradients through torch.where's backward, even though the forward value ignores it.
    logp = torch.where(own, logprobs, zero)
    old = torch.where(own, old_logprobs.detach().to(logprobs.dtype), zero)
    adv = advantages.detach().to(logprobs.dtype)
    adv = adv.unsqueeze(-1).expand(shape) if adv.ndim == 1 else adv

    ratio = torch.exp(logp - old)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)

    kl = None
    if ref_logprobs is not None:
        ref_minus_logp = torch.where(own, ref_logprobs.detach().to(logprobs.dtype), zero) - logp
        kl = torch.exp(ref_minus_logp) - ref_minus_logp - 1
        if kl_beta > 0:
            per_token = per_token + kl_beta * kl
    per_token = torch.where(own, per_token, zero)

    denominator = own.sum().clamp_min(1) if num_tokens is None else torch.as_tensor(num_tokens)
    if num_tokens is not None and not float(denominator) > 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens!r}")
    loss = per_token.sum() / denominator

    with torch.no_grad():
        count = own.sum().clamp_min(1).to(logprobs.dtype)
        clip_active = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        stats = {
            "clip_fraction": (clip_active & own).sum().to(logprobs.dtype) / count,
            "ratio_mean": torch.where(own, ratio, zero).sum() / count,
        }
        if kl is not None:
            stats["kl_mean"] = torch.where(own, kl, zero).sum() / count
    return loss, stats


def reinforce_loss(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE loss ``-mean_b(A_b · log P_b)``; the advantages are constants (detached).

    Args:
        log_prob: ``[B]`` log-probabilities of the sampled selections (differentiable, see :func:`sampler_log_prob`).
        advantages: ``[B]`` their advantages (stage 1: :func:`~msjoe.rl.rewards.difficulty_advantage`; stage 2:
            :func:`~msjoe.rl.advantages.sampler_advantages`).
    """
    if log_prob.ndim != 1 or log_prob.numel() == 0:
        raise ValueError(f"log_prob must have shape [B] with B >= 1, got shape {tuple(log_prob.shape)}")
    if tuple(advantages.shape) != tuple(log_prob.shape):
        raise ValueError(
            f"advantages must have the shape of log_prob {tuple(log_prob.shape)}, got {tuple(advantages.shape)}"
        )
    return -(advantages.detach().to(log_prob.dtype) * log_prob).mean()


def sampler_log_prob(
    logits: torch.Tensor, order: torch.Tensor, estimator: Estimator = "plackett_luce", width: int = 0
) -> torch.Tensor:
    """Log-probability of the sampler's draw ``order`` from ``softmax(logits)``; differentiable in ``logits``.

    Args:
        logits: ``[T]`` or ``[B, T]`` per-frame logits.
        order: ``[K]`` or ``[B, K]`` distinct frame indices *in draw order* (as :func:`msjoe.samplers.policy.draw`
            returns them).
        estimator: ``"plackett_luce"`` (ours, default): the exact log-probability of the ordered draw under the
            U-Sampler's policy, ``sum_k [l_{x_k} - logsumexp(l over the frames available before draw k)]``
            (:func:`msjoe.samplers.policy.log_prob`; with ``width = 0``, plain Plackett–Luce); ``"independent"``
            (paper): ``sum_k log p(x_k)``, which ignores the renormalisation after each draw.
        width: the policy's suppression width in candidates (``USampler.suppression_width(T, K)``); only used by
            ``"plackett_luce"``.

    Returns:
        A scalar for 1-D inputs, ``[B]`` for batched ones.
    """
    if estimator == "plackett_luce":

        def log_prob_of(row: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
            return policy.log_prob(row, draw, width)

    elif estimator == "independent":
        log_prob_of = independent_log_prob
    else:
        raise ValueError(f"estimator must be 'plackett_luce' or 'independent', got {estimator!r}")
    if logits.ndim not in (1, 2) or order.ndim != logits.ndim:
        raise ValueError(
            f"logits [T] / [B, T] and order [K] / [B, K] must both be 1-D or both 2-D, got shapes "
            f"{tuple(logits.shape)} and {tuple(order.shape)}"
        )
    if order.ndim == 2 and order.shape[0] != logits.shape[0]:
        raise ValueError(f"logits and order must have the same batch size, got {logits.shape[0]} and {order.shape[0]}")
    num_frames = logits.shape[-1]
    if order.dtype in (torch.bool,) or order.is_floating_point() or order.is_complex():
        raise ValueError(f"order must hold integer frame indices, got dtype {order.dtype}")
    if order.numel() and (order.min() < 0 or order.max() >= num_frames):
        raise ValueError(f"order holds indices outside [0, {num_frames}): {order.tolist()}")
    ordered = order.sort(-1).values
    if (ordered[..., 1:] == ordered[..., :-1]).any():
        raise ValueError(f"order must hold distinct frames (a draw without replacement), got {order.tolist()}")
    if logits.ndim == 1:
        return log_prob_of(logits, order)
    return torch.stack([log_prob_of(row, draw) for row, draw in zip(logits, order, strict=True)])
