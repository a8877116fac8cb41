"""Rewards of MSJoE training: the stage-1 difficulty-aware advantage and the stage-2 rollout reward.

Stage 1 (sampler pre-training, MLLM frozen). Each training item carries a difficulty ``c`` in [0, 1], the base
MLLM's pass rate with uniformly sampled frames. After the MLLM answers from the sampler's frames, the sampler's
advantage is (paper)::

    A = 1 / c          if the answer is correct   (rewarding a hard item more)
    A = -1 / (1 - c)   if the answer is wrong     (penalising a failure on an easy item more)

The paper sets ``A = 10`` for ``c = 0`` and correct. Ours: ``|A|`` is clipped at ``clip`` (default 10, so the
paper's value comes out of the same rule), and ``c = 1`` and wrong symmetrically gives ``-clip``.

Stage 2 (joint evolution). A rollout's reward is ``r = w_acc · r_acc + w_format · r_format + w_info · r_info``:

- ``r_acc`` (paper): 1 if the parsed option is the correct one, else 0;
- ``r_format`` (paper): 1 if *both* the query turn and the answer turn follow the required format, else 0;
- ``r_info`` (paper's idea, our test): the fraction of the rollout's queries whose similarity row is
  informative — see :func:`informative_queries`.

The functions below take booleans and fractions, not replies or models, so they stay pure and can be tested
exactly; :func:`answer_is_correct` and :func:`rollout_follows_format` turn reply strings into those booleans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import torch

from msjoe.checks import AT_LEAST_0, check_fields
from msjoe.mllm.parsing import answer_follows_format, parse_answer, queries_follow_format
from msjoe.mllm.prompts import option_letters

# MAD × 1.4826 is a consistent estimate of the standard deviation of Gaussian noise, so the informativeness
# threshold reads in "noise sigmas".
ROBUST_SIGMA_PER_MAD = 1.4826
DEFAULT_INFO_THRESHOLD = 5.0


# --------------------------------------------------------------------------------------------------------------
# Stage 1: difficulty-aware advantage
# --------------------------------------------------------------------------------------------------------------
def difficulty_advantage(
    correct: bool | float | torch.Tensor, difficulty: float | torch.Tensor, *, clip: float = 10.0
) -> torch.Tensor:
    """Stage-1 advantage of the sampler: ``1/c`` when correct, ``-1/(1-c)`` when wrong, clipped to ``[-clip, clip]``.

    Args:
        correct: whether the MLLM answered correctly (bool, or a bool / 0-1 tensor), or the *probability* ``q`` in
            [0, 1] that it answers correctly from these frames. A probability gives the expected advantage
            ``q · A(correct) + (1 - q) · A(wrong)`` (each part clipped first): the same mean as a coin flip with
            probability ``q``, without its variance. Simulators and answerers that expose the probability of the gold
            answer use it.
        difficulty: the item's base pass rate ``c`` in [0, 1] (float or tensor); broadcast against ``correct``.
        clip: the largest ``|A|`` (ours; 10 by default). ``c = 0`` and correct gives ``+clip`` — the paper's 10 at
            the default — and ``c = 1`` and wrong gives ``-clip`` (ours, by symmetry).

    Returns:
        A float tensor of the broadcast shape of ``correct`` and ``difficulty`` (a 0-d tensor for scalars), in
        ``difficulty``'s dtype when it is a floating tensor, else the default dtype.

    Raises:
        ValueError: a difficulty outside [0, 1] (or NaN), a ``correct`` value outside [0, 1], or a bad ``clip``.

    Example: ``c = 0.25`` gives ``4.0`` when correct and ``-4/3`` when wrong (``1.0`` for ``q = 0.5``);
    ``c = 0.05`` and correct gives ``1/0.05 = 20``, clipped to ``10``.
    """
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite positive number, got {clip!r}")
    pass_rate = _float_tensor(difficulty)
    outside = ~((pass_rate >= 0) & (pass_rate <= 1))  # written so that NaN counts as outside
    if outside.any():
        where = outside.nonzero()[0]
        location = f" at index {tuple(where.tolist())}" if pass_rate.ndim else ""
        raise ValueError(f"difficulty must be a pass rate in [0, 1], got {pass_rate[tuple(where)].item()!r}{location}")
    probability = torch.as_tensor(correct).to(device=pass_rate.device, dtype=pass_rate.dtype)
    if not ((probability >= 0) & (probability <= 1)).all():  # written so that NaN counts as outside
        raise ValueError(f"correct must be a bool or a probability in [0, 1], got {probability.tolist()!r}")
    # 1/0 = inf and -1/0 = -inf are exact in IEEE arithmetic; the clamp turns them into +-clip.
    if_correct = (1.0 / pass_rate).clamp(-clip, clip)
    if_wrong = (-1.0 / (1.0 - pass_rate)).clamp(-clip, clip)
    # where() rather than q·a + (1 - q)·b for 0/1 inputs: 0 · inf would be NaN before the clamp otherwise.
    return torch.where(
        probability == 1,
        if_correct,
        torch.where(probability == 0, if_wrong, probability * if_correct + (1 - probability) * if_wrong),
    )


# --------------------------------------------------------------------------------------------------------------
# Stage 2: informative queries
# --------------------------------------------------------------------------------------------------------------
def peak_prominence(sim: torch.Tensor) -> torch.Tensor:
    """How far each similarity row's peak stands above the row's bulk, in robust noise sigmas.

    ``prominence = (max - median) / (1.4826 · MAD)``, with ``MAD = median(|s - median|)`` over the row's ``T``
    frames (the median of an even number of values is the mean of the two middle ones).

    - It is invariant to adding a constant to a row and to multiplying it by a positive number, so it does not
      depend on the dual encoder's similarity offset or spread (cosines of CLIP and SigLIP differ in both).
    - A constant row, and any row with ``T = 1``, has ``max = median``: prominence 0.
    - A row whose frames mostly tie (``MAD = 0``) but with some frames above the tie has prominence ``inf``.
    - Only a *peak* counts: a row that is high everywhere except for a few low frames has prominence near 0.

    Args:
        sim: similarities ``[..., T]`` (typically ``[Nq, T]``), finite, ``T >= 1``.

    Returns:
        ``[...]`` prominences (float, ``>= 0``, possibly ``inf``) in ``sim``'s floating dtype.
    """
    gap, spread = _peak_gap_and_spread(sim)
    prominence = torch.where(gap > 0, gap / spread, torch.zeros_like(gap))  # gap/0 = inf when the bulk ties
    return prominence.to(sim.dtype if sim.is_floating_point() else torch.get_default_dtype())


def informative_queries(
    sim: torch.Tensor, *, threshold: float = DEFAULT_INFO_THRESHOLD, min_gap: float = 0.0
) -> torch.Tensor:
    """Which queries' similarity rows are informative: the query picks out some frames rather than all equally.

    Paper: row ``j`` is informative when ``max_i S_ji / min_i S_ji > 10``. That ratio is undefined or meaningless
    for cosines that are zero or negative, and it changes when the encoder shifts all similarities. Ours: a row is
    informative when its peak stands out of the row's bulk by more than ``threshold`` robust noise sigmas,
    ``(max - median) > threshold · 1.4826 · MAD`` (see :func:`peak_prominence`), and, optionally, by more than
    ``min_gap`` similarity units in absolute terms.

    The default ``threshold = 5`` is ours: for rows of independent Gaussian noise it is exceeded with probability
    below 1% for every ``T`` up to 10,000 (400 simulated rows per length: 0.3%, 0%, 0.5%, 0.3% at T = 64, 600,
    3,600, 10,000), while a
    peak 6 sigmas high covering 2% of an hour's frames is found every time. Heavy-tailed rows exceed it more often,
    which is the intent: their extremes do stand out.

    Args:
        sim: similarities ``[..., Nq, T]`` (or a single row ``[T]``), finite, ``T >= 1``.
        threshold: the prominence a peak must exceed, in robust sigmas (``>= 0``).
        min_gap: an absolute floor on ``max - median`` (``>= 0``); ``0`` keeps the test scale-free. Setting it
            (e.g. ``1e-3`` for cosines) ignores numerical jitter on rows that are constant up to rounding — at the
            price of scale invariance.

    Returns:
        A bool tensor of shape ``sim.shape[:-1]``.
    """
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if not (math.isfinite(min_gap) and min_gap >= 0):
        raise ValueError(f"min_gap must be a finite number >= 0, got {min_gap!r}")
    gap, spread = _peak_gap_and_spread(sim)
    # Written without a division so that a tied bulk (spread 0) under a real peak counts as informative.
    return (gap > threshold * spread) & (gap > min_gap)


def informative_fraction(
    sim: torch.Tensor, *, threshold: float = DEFAULT_INFO_THRESHOLD, min_gap: float = 0.0
) -> torch.Tensor:
    """The fraction of a rollout's queries that are informative, from ``sim [..., Nq, T]``; 0 when ``Nq = 0``."""
    if sim.ndim < 2:
        raise ValueError(f"sim must have shape [..., Nq, T], got shape {tuple(sim.shape)}")
    num_queries = sim.shape[-2]
    dtype = sim.dtype if sim.is_floating_point() else torch.get_default_dtype()
    if num_queries == 0:
        return torch.zeros(sim.shape[:-2], dtype=dtype, device=sim.device)
    flags = informative_queries(sim, threshold=threshold, min_gap=min_gap)
    return flags.to(dtype).sum(-1) / num_queries


def info_reward(
    sim: torch.Tensor, weight: float = 0.1, *, threshold: float = DEFAULT_INFO_THRESHOLD, min_gap: float = 0.0
) -> torch.Tensor:
    """``r_info = weight × (fraction of informative queries)`` for ``sim [..., Nq, T]`` (paper: weight 0.1)."""
    return weight * informative_fraction(sim, threshold=threshold, min_gap=min_gap)


def _peak_gap_and_spread(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``max - median`` and ``1.4826 · MAD`` of each row, in float64 (rows are short: at most ~10^4 frames)."""
    if sim.ndim < 1 or sim.shape[-1] < 1:
        raise ValueError(f"sim must have shape [..., T] with T >= 1 frames, got shape {tuple(sim.shape)}")
    values = sim.detach().double()
    if not torch.isfinite(values).all():
        where = (~torch.isfinite(values)).nonzero()[0]
        raise ValueError(f"sim must be finite, got {values[tuple(where)].item()} at index {tuple(where.tolist())}")
    median = _median(values)
    gap = values.amax(-1) - median
    spread = ROBUST_SIGMA_PER_MAD * _median((values - median.unsqueeze(-1)).abs())
    return gap, spread


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median over the last dimension; the mean of the two middle values for an even count (torch.median
    returns the lower one)."""
    ordered = values.sort(-1).values
    count = values.shape[-1]
    return 0.5 * (ordered[..., (count - 1) // 2] + ordered[..., count // 2])


# --------------------------------------------------------------------------------------------------------------
# Stage 2: the rollout reward
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardWeights:
    """Weights of the stage-2 reward ``r = accuracy · r_acc + format · r_format + info · r_info``.

    Attributes:
        accuracy: weight of ``r_acc`` (1 if correct, else 0). Paper: 1.0 (one passage mentions 0.8; both work
            with the ordering argument below).
        format: weight of ``r_format`` (1 if the queries and the answer are both in the required format).
            Ours: 0.5 — the paper does not state it. It is below ``accuracy - info`` so that rollouts order
            lexicographically: a correct answer always beats a wrong one whatever the format (1 > 0.5 + 0.1,
            and 0.8 > 0.5 + 0.1), well-formed beats ill-formed among equally correct rollouts (0.5 > 0.1), and
            ``r_info`` only breaks the remaining ties. A weight of 1.0 would let a wrong, well-formed rollout tie
            a correct, ill-formed one.
        info: weight of ``r_info`` (the fraction of informative queries). Paper: 0.1.
    """

    accuracy: Annotated[float, AT_LEAST_0] = 1.0
    format: Annotated[float, AT_LEAST_0] = 0.5
    info: Annotated[float, AT_LEAST_0] = 0.1

    def __post_init__(self) -> None:
        check_fields(self)  # every weight a finite number >= 0, from its annotation


@dataclass(frozen=True)
class RewardBreakdown:
    """A rollout reward and its weighted parts (tensors of one shape), kept apart for logging."""

    accuracy: torch.Tensor
    format: torch.Tensor
    info: torch.Tensor
    total: torch.Tensor


def rollout_reward(
    correct: bool | torch.Tensor,
    queries_well_formed: bool | torch.Tensor,
    answer_well_formed: bool | torch.Tensor,
    info_fraction: float | torch.Tensor,
    weights: RewardWeights | None = None,
) -> RewardBreakdown:
    """Stage-2 reward of one rollout, or of a batch of rollouts (arguments broadcast together).

    ``total = weights.accuracy · correct + weights.format · (queries_well_formed AND answer_well_formed)
    + weights.info · info_fraction``.

    Args:
        correct: the parsed answer is the correct option (see :func:`answer_is_correct`).
        queries_well_formed: the query turn follows the strict format (``queries_follow_format``).
        answer_well_formed: the answer turn follows the strict format (``answer_follows_format``).
        info_fraction: fraction of the rollout's queries that are informative (:func:`informative_fraction`),
            in [0, 1].
        weights: the reward weights; :class:`RewardWeights` defaults when ``None``.
    """
    weights = weights or RewardWeights()
    fraction = _float_tensor(info_fraction)
    if not ((fraction >= 0) & (fraction <= 1)).all():
        raise ValueError(f"info_fraction must lie in [0, 1], got {fraction.tolist()!r}")
    hit = _bool_tensor(correct, "correct")
    well_formed = _bool_tensor(queries_well_formed, "queries_well_formed") & _bool_tensor(
        answer_well_formed, "answer_well_formed"
    )
    shape = torch.broadcast_shapes(hit.shape, well_formed.shape, fraction.shape)
    accuracy = (weights.accuracy * hit.to(fraction.dtype)).expand(shape)
    format_part = (weights.format * well_formed.to(fraction.dtype)).expand(shape)
    info = (weights.info * fraction).expand(shape)
    return RewardBreakdown(accuracy=accuracy, format=format_part, info=info, total=accuracy + format_part + info)


def answer_is_correct(reply: str, options: Sequence[str], answer: str) -> bool:
    """``r_acc``'s test: the letter :func:`~msjoe.mllm.parsing.parse_answer` reads from ``reply`` is ``answer``.

    An ambiguous or unparsed reply counts as wrong.
    """
    valid = option_letters(len(options))
    gold = answer.strip().upper()
    if gold not in valid:
        raise ValueError(f"answer must be one of the option letters {valid}, got {answer!r}")
    parsed = parse_answer(reply, options)
    return parsed.ok and parsed.letter == gold


def rollout_follows_format(query_reply: str, answer_reply: str, options: Sequence[str]) -> bool:
    """``r_format``'s test: both turns are in the strict format the prompts ask for."""
    return queries_follow_format(query_reply) and answer_follows_format(answer_reply, options)


# --------------------------------------------------------------------------------------------------------------
def _float_tensor(value: float | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    return tensor if tensor.is_floating_point() else tensor.to(torch.get_default_dtype())


def _bool_tensor(value: bool | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dtype == torch.bool:
        return tensor
    if not ((tensor == 0) | (tensor == 1)).all():
        raise ValueError(f"{name} must be boolean (or 0/1), got {tensor.tolist()!r}")
    return tensor != 0
