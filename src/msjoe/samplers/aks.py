"""AKS, Adaptive Keyframe Sampling (Tang et al., CVPR 2025): judge-and-split over the timeline.

A segment whose best frames stand out from the rest (``mean(top-m) - mean(segment) > t1`` on scores in [0, 1]) is
kept whole and gets ``floor(K / 2^d)`` of its best frames at depth ``d``; otherwise it is split in halves, up to a
maximum depth. Peaked segments are served by relevance, flat ones by coverage. Reference implementation:
``meanstd`` and ``main`` in the authors' ``frame_select.py`` (github.com/ncTimTang/AKS).

The reference judges min-max normalised BLIP image-text-matching *probabilities* (``scores="minmax"`` here): most
frames score near 0 and matching frames near 1, so a peak clears ``t1 = 0.8``. CLIP cosines sit in a narrow band
with the peak a few noise widths above it; min-max normalised, a segment's mean stays far above 0 and the judge
never passes, so AKS reduces to one best frame per leaf (bin-max). ``scores="match"`` turns cosines into a
match probability first (docs/decisions.md, "AKS on CLIP cosines").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from msjoe.checks import is_int
from msjoe.samplers import register_sampler
from msjoe.samplers.base import Sampler, all_frames, check_similarity
from msjoe.samplers.selection import topk_indices

AKSScores = Literal["minmax", "match"]
"""How similarities become the scores AKS judges: see :class:`AKSSampler`."""

# 1.4826 * MAD and sqrt(pi / 2) * mean |s - median| both estimate a Gaussian's standard deviation.
_MAD_TO_STD = 1.4826
_MEAN_ABS_TO_STD = math.sqrt(math.pi / 2)


@dataclass(frozen=True)
class Segment:
    """Candidates ``[start, end)`` at split depth ``depth`` (the whole video is depth 0)."""

    start: int
    end: int
    depth: int


def judge_and_split(
    scores: torch.Tensor,
    top_m: int,
    max_depth: int,
    relevance_threshold: float,
    std_threshold: float | None = None,
) -> list[Segment]:
    """Partition ``[0, T)`` into the segments AKS keeps, in time order.

    A segment is kept when ``mean(top-m) - mean > relevance_threshold`` (and, if given, its standard deviation
    exceeds ``std_threshold``) or when it is at ``max_depth``; otherwise it is split into ``[start, mid)`` and
    ``[mid, end)`` with ``mid = start + len // 2`` (the reference code's split).
    """
    kept: list[Segment] = []
    pending = [Segment(0, scores.numel(), 0)]
    while pending:
        segment = pending.pop(0)
        values = scores[segment.start : segment.end]
        if values.numel() == 0:
            continue
        top = torch.topk(values, min(top_m, values.numel())).values
        peaked = float(top.mean() - values.mean()) > relevance_threshold
        if peaked and std_threshold is not None:
            # Population standard deviation, as numpy.std in the reference code.
            peaked = float(values.std(correction=0)) > std_threshold
        if peaked or segment.depth >= max_depth:
            kept.append(segment)
        else:
            mid = segment.start + values.numel() // 2
            pending += [Segment(segment.start, mid, segment.depth + 1), Segment(mid, segment.end, segment.depth + 1)]
    return sorted(kept, key=lambda s: s.start)


@register_sampler("aks")
class AKSSampler(Sampler):
    """Adaptive Keyframe Sampling over per-frame relevance scores derived from the similarity ``S [Nq, T]``.

    Args:
        max_depth: Deepest split level (reference default ``all_depth = 5``). The depth actually used is
            ``min(max_depth, floor(log2 K))``: a segment at depth ``d`` is worth ``floor(K / 2^d)`` frames, which is
            0 beyond ``log2 K``, and the reference code then returns fewer than K frames (none at all when every
            segment is split, e.g. K = 8 at depth 5). For ``K >= 2^max_depth`` this is exactly the reference.
        relevance_threshold: ``t1``, the margin ``mean(top-m) - mean(segment)`` above which a segment is kept
            whole (reference default 0.8, on scores in [0, 1]).
        std_threshold: ``t2``, an optional extra condition ``std(segment) > t2`` for keeping a segment. The
            reference default -100 never binds; ``None`` (default) disables it.
        top_m: ``m`` in the judge; ``None`` (default) uses the budget K at every depth, as the reference code
            does.
        scores: How ``S`` becomes the per-frame scores the judge reads.

            - ``"minmax"`` (default, the reference): the max over queries of the raw cosine, min-max normalised
              over the video. With CLIP cosines no segment is ever kept whole on our simulator.
            - ``"match"``: a match probability in the spirit of the reference's BLIP ITM head,
              ``sigmoid(max_q z_q(t) - match_threshold)``, where ``z_q`` is query row ``q`` standardised over the
              video by its median and MAD (robust: the evidence is a few percent of the frames). Background frames
              get about ``sigmoid(-match_threshold)`` and a frame ``match_threshold`` robust standard deviations
              above its row's median gets 0.5. Not min-max normalised: stretching a video with no match to [0, 1]
              would invent a peak. Standardising each row also keeps a flat query with a high base level from
              drowning a lower row that has a peak.
        match_threshold: For ``scores="match"``, the z-score at which a frame is an even-odds match (default 3, a
            three-sigma outlier). With ``top_m = K`` the judge then keeps a segment whole when it holds about
            ``0.85 K`` frames some 1.7 standard deviations or more above that, while the rest of it is background.

    Each kept segment at depth ``d`` contributes its top ``floor(K / 2^d)`` frames (all of it if shorter). The
    shares sum to at most K; the budget left by rounding or by short segments is filled with the highest-scoring
    frames not yet chosen, so exactly ``min(K, T)`` frames come back. Ties go to the earlier frame: a constant
    similarity (never "peaked" under either score) splits down to the depth limit and takes the first frame(s) of
    each leaf, then the earliest remaining frames. Adding a constant to S or scaling it by a positive factor leaves
    the choice unchanged under both scores; under ``"minmax"`` only the ranking of the max over queries matters.
    """

    def __init__(
        self,
        max_depth: int = 5,
        relevance_threshold: float = 0.8,
        std_threshold: float | None = None,
        top_m: int | None = None,
        scores: AKSScores = "minmax",
        match_threshold: float = 3.0,
    ) -> None:
        if not is_int(max_depth) or max_depth < 0:
            raise ValueError(f"AKS max_depth must be a non-negative integer, got {max_depth!r}")
        if top_m is not None and (not is_int(top_m) or top_m < 1):
            raise ValueError(f"AKS top_m must be a positive integer or None, got {top_m!r}")
        if scores not in get_args(AKSScores):
            raise ValueError(f"AKS scores must be one of {', '.join(map(repr, get_args(AKSScores)))}, got {scores!r}")
        if (
            isinstance(match_threshold, bool)
            or not isinstance(match_threshold, int | float)
            or not math.isfinite(match_threshold)
        ):
            raise ValueError(
                f"AKS match_threshold must be a finite number (of standard deviations), got {match_threshold!r}"
            )
        self.max_depth = max_depth
        self.relevance_threshold = float(relevance_threshold)
        self.std_threshold = None if std_threshold is None else float(std_threshold)
        self.top_m = top_m
        self.scores = scores
        self.match_threshold = float(match_threshold)

    def frame_scores(self, sim: torch.Tensor) -> torch.Tensor:
        """The per-frame scores ``[T]`` (float64, CPU) that the judge and the per-segment top-k read."""
        sim = sim.detach().double().cpu()
        if self.scores == "minmax":
            return min_max_normalise(sim.max(dim=0).values)
        return match_probability(sim, self.match_threshold)

    def segments(self, scores: torch.Tensor, k: int) -> list[Segment]:
        """The kept segments for normalised ``scores`` and budget ``k`` (exposed for inspection and tests)."""
        depth = min(self.max_depth, k.bit_length() - 1)  # floor(log2 k), exact for every int
        return judge_and_split(scores, self.top_m or k, depth, self.relevance_threshold, self.std_threshold)

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        num_frames = sim.shape[1]
        if k >= num_frames:
            return all_frames(num_frames, sim.device)
        scores = self.frame_scores(sim)
        chosen: list[int] = []
        for segment in self.segments(scores, k):
            share = k // 2**segment.depth
            if share > 0:
                picks = topk_indices(scores[segment.start : segment.end], share) + segment.start
                chosen += picks.tolist()
        if len(chosen) < k:
            remaining = scores.clone()
            remaining[chosen] = -math.inf
            chosen += topk_indices(remaining, k - len(chosen)).tolist()
        return torch.sort(torch.tensor(chosen, dtype=torch.long)).values.to(sim.device)

    def __repr__(self) -> str:
        return (
            f"AKSSampler(max_depth={self.max_depth}, relevance_threshold={self.relevance_threshold}, "
            f"std_threshold={self.std_threshold}, top_m={self.top_m}, scores={self.scores!r}, "
            f"match_threshold={self.match_threshold})"
        )


def min_max_normalise(scores: torch.Tensor) -> torch.Tensor:
    """``(s - min) / (max - min)``; a constant ``s`` maps to zeros (the reference code would divide by zero)."""
    spread = scores.max() - scores.min()
    if spread <= 0:
        return torch.zeros_like(scores)
    return (scores - scores.min()) / spread


def robust_z_scores(sim: torch.Tensor) -> torch.Tensor:
    """Each row of ``sim [Nq, T]`` as ``(s - median) / sigma``, sigma a robust standard deviation of the row.

    Median and MAD describe the background even when a few percent of the frames carry a peak (a mean and standard
    deviation would be pulled up by the peak they are meant to measure it against). When more than half of a row
    is one value (MAD = 0), sigma falls back to the mean absolute deviation; a constant row gives zeros.
    """
    median = sim.median(dim=1, keepdim=True).values
    deviation = (sim - median).abs()
    sigma = _MAD_TO_STD * deviation.median(dim=1, keepdim=True).values
    sigma = torch.where(sigma > 0, sigma, _MEAN_ABS_TO_STD * deviation.mean(dim=1, keepdim=True))
    return torch.where(sigma > 0, (sim - median) / sigma.clamp_min(torch.finfo(sim.dtype).tiny), 0.0)


def match_probability(sim: torch.Tensor, threshold: float) -> torch.Tensor:
    """``sigmoid(max_q z_q(t) - threshold)``: how likely frame ``t`` matches, from robust z-scores over time."""
    return torch.sigmoid(robust_z_scores(sim).max(dim=0).values - threshold)
