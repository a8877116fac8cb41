"""A sampler simulator for fast CPU experiments: synthetic similarity matrices with planted evidence, and a
simulated answerer whose success depends on how much of that evidence the chosen frames cover.

Real stage-1 training needs an MLLM in the loop; this module stands in for the video, the dual encoder and the
MLLM so that samplers, selection rules and REINFORCE variants can be compared in minutes on a CPU. Everything is
seeded: an item is a pure function of ``(split_seed, index)`` and the config, so a held-out split is simply
another seed.

**An item** (:func:`generate_item`) models one question about one video sampled at 1 fps:

- ``T`` candidates, log-uniform in ``[min_frames, max_frames]`` (default 200 to 3,600: 3 minutes to an hour);
- 1 to 4 query rows ``S [Nq, T]`` of CLIP-like cosines;
- **evidence spans**: a *single* item needs ``m`` (1 to 3) frames of one span (an action seen over several
  frames); a *multi-hop* item needs one frame from each of 2 or 3 spans;
- optionally **relation** items (``relation_fraction``): the queries describe an *anchor* next to the evidence
  ("what happens after X?") and only echo on the evidence itself;
- **look-alike distractor spans** that match exactly one query, as strongly as the evidence or more;
- a **temporally smooth background**: per-shot offsets shared by all queries (scene changes move every row
  together) plus Gaussian-filtered noise plus a little white noise, around a per-query base level drawn from the
  band real CLIP cosines occupy (about 0.17 to 0.25, peaks up to about 0.35);
- **queries of varying quality**: each query targets one evidence span with a quality in ``[0.25, 1]`` that scales
  its bump, or is uninformative (pure background). An evidence span also registers, more weakly, on the queries
  that target *other* aspects of the question (``cross_match``): the true moment matches the question as a whole
  while a look-alike matches one description only.

Base levels differ between queries (as they do between CLIP text prompts), so the raw max over queries can be
dominated by a flat, uninformative row. That is a real weakness of samplers that rank raw cosines, not a trick of
the simulator: it is why the U-Sampler standardises each row.

**The answerer** (:class:`SimulatedAnswerer`). With ``coverage`` = the mean over evidence spans of
``min(hits, needed) / needed`` (see :meth:`SimulatedItem.coverage`)::

    P(correct) = guess + (1 - guess) · (1 - hardness) · coverage ** coverage_exponent

with ``guess = 1 / num_options`` and ``hardness`` the item's frame-independent reasoning difficulty. The exponent
(default 2) makes partial evidence worth less than proportionally: one hop out of two gives a quarter of the
benefit.

**Difficulty** (paper: the base MLLM's pass rate with uniform frames). Here the uniform frames are *stratified*:
one frame drawn uniformly inside each of K equal bins (uniform sampling with a random phase). Its expected
``P(correct)`` is computed exactly by :meth:`SimulatedItem.uniform_pass_rate` (a dynamic programme over the
bins), so the difficulty carries no Monte-Carlo noise and a sampler that does no better than uniform gets a
zero-mean difficulty-aware advantage.

**Metrics** (:func:`evaluate_sampler`): *evidence recall* is :meth:`SimulatedItem.coverage` (the fraction of the
required evidence frames the selection covers), *span hit rate* the fraction of evidence spans with at least one
chosen frame, and *simulated accuracy* the expected ``P(correct)`` (no coin flip, to keep comparisons free of
answerer noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from msjoe.checks import is_int
from msjoe.samplers.base import Sampler, check_similarity

ItemKind = Literal["single", "multi_hop", "global", "relation"]


@dataclass(frozen=True)
class SimulatorConfig:
    """How simulated items are drawn. Ranges are inclusive; "per item" values are drawn once per item.

    The defaults aim at hour-long-video QA at 1 fps with CLIP ViT-L/14 cosines; see the module docstring.
    """

    min_frames: int = 200
    """Fewest candidates of an item (T is log-uniform between ``min_frames`` and ``max_frames``)."""
    max_frames: int = 3600
    """Most candidates of an item (an hour at 1 fps)."""
    max_queries: int = 4
    """Most query rows (paper: at most 4 queries)."""
    multi_hop_fraction: float = 0.4
    """Share of items that need one frame from each of several spans; the others need ``m`` frames of one span."""
    max_hops: int = 3
    """Most evidence spans of a multi-hop item (at least 2)."""
    frames_needed_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    """Probabilities that a single-span item needs 1, 2, 3, ... of its span's frames."""
    min_span_frames: int = 3
    """Shortest span (evidence or distractor), in candidates."""
    max_span_frames: int = 48
    """Longest span; spans are also capped at ``max_span_fraction`` of T. Lengths are log-uniform."""
    max_span_fraction: float = 0.08
    """Longest span as a fraction of T, so that short videos are not made of evidence."""
    span_length_quantiles: tuple[tuple[float, float], ...] = ()
    """Optional span-length distribution as ``(quantile, candidates)`` points from 0 to 1, e.g. a real benchmark's
    measured quantiles; lengths are drawn by inverse CDF, interpolated linearly in ``log(1 + length)``, then held
    to at least the frames a span must supply and at most the cap. Empty (default): log-uniform between
    ``min_span_frames`` and the cap."""
    global_fraction: float = 0.0
    """Share of *global* (summary) items: many evidence spans across the video, one frame of each needed, and
    queries that describe the video as a whole (each matches one span, weakly). Coverage wins there."""
    global_spans: tuple[int, int] = (6, 12)
    """Range of the number of evidence spans of a global item."""
    relation_fraction: float = 0.0
    """Share of the single-span items that are *relation* items ("what does she do after X?"): the evidence lies
    next to an *anchor* span that the queries describe, so the queries peak on the anchor and only echo on the
    evidence; the answer needs the evidence, not the anchor. A similarity prior cannot read that offset; a
    temporal model could learn it (stage 1 does not yet: bench/RESULTS.md, "Relation questions"). 0 (default):
    none, and the other items are the same whatever this value."""
    relation_gap: tuple[int, int] = (0, 20)
    """Range of the gap between anchor and evidence, in candidates."""
    relation_after: float = 0.75
    """Probability that the evidence follows its anchor (else it precedes it: "what happened before X?")."""
    relation_echo: tuple[float, float] = (0.0, 0.3)
    """Per relation item: the evidence's bump on the queries, as a fraction of the anchor's."""
    max_distractors: int = 4
    """Most look-alike distractor spans (at least 1 per item)."""
    distractor_strength: tuple[float, float] = (0.7, 1.4)
    """A distractor's bump on its query, relative to the evidence bump of that query."""
    uninformative_query_prob: float = 0.25
    """Probability that a query matches nothing (its row is pure background)."""
    query_quality: tuple[float, float] = (0.25, 1.0)
    """Range of an informative query's quality (the fraction of the item's peak height its bump reaches)."""
    cross_match: tuple[float, float] = (0.15, 0.6)
    """Per item: how strongly evidence registers on queries that target other spans (fraction of their bump)."""
    peak_height: tuple[float, float] = (0.04, 0.10)
    """Per item: the cosine a quality-1 query gains on its evidence (real CLIP peaks: a few hundredths)."""
    base_level: tuple[float, float] = (0.17, 0.25)
    """Per query: the background cosine level (differs between text prompts)."""
    shot_length: tuple[float, float] = (8.0, 40.0)
    """Per item: mean shot length in candidates (shot lengths are geometric around it)."""
    shot_std: tuple[float, float] = (0.004, 0.015)
    """Per item: standard deviation of the per-shot offset, shared by every query row (with some per-row part)."""
    noise_std: tuple[float, float] = (0.004, 0.012)
    """Per item: standard deviation of the Gaussian-filtered within-shot noise."""
    noise_smoothing: tuple[float, float] = (1.0, 4.0)
    """Per item: the Gaussian filter's sigma in candidates (temporal smoothness of the noise)."""
    white_noise_std: float = 0.003
    """Per-frame independent noise (encoder jitter)."""
    edge_width: float = 1.5
    """Bumps decay outside their span with a Gaussian of this width (frames next to an event look alike)."""
    num_options: int = 4
    """Answer options; the guess rate is ``1 / num_options``."""
    max_hardness: float = 0.3
    """Per item: ``hardness`` is uniform in ``[0, max_hardness]``; it caps P(correct) below 1 even with all evidence."""
    coverage_exponent: float = 2.0
    """``f(coverage) = coverage ** coverage_exponent`` in the answerer (> 0; larger = partial evidence helps less)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames} and {self.max_frames}")
        if not 1 <= self.max_queries <= 4:
            raise ValueError(f"max_queries must be between 1 and 4, got {self.max_queries}")
        if not 0 <= self.multi_hop_fraction <= 1:
            raise ValueError(f"multi_hop_fraction must lie in [0, 1], got {self.multi_hop_fraction}")
        if self.max_hops < 2:
            raise ValueError(f"max_hops must be >= 2, got {self.max_hops}")
        weights = np.asarray(self.frames_needed_weights, dtype=float)
        if weights.size == 0 or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"frames_needed_weights must be non-negative with a positive sum, got {weights}")
        if not 1 <= self.min_span_frames <= self.max_span_frames:
            raise ValueError(
                f"need 1 <= min_span_frames <= max_span_frames, got {self.min_span_frames}, {self.max_span_frames}"
            )
        if self.min_span_frames < len(self.frames_needed_weights):
            raise ValueError(
                f"min_span_frames={self.min_span_frames} is shorter than the {len(self.frames_needed_weights)} "
                "frames an item may need (frames_needed_weights)"
            )
        points = [tuple(point) for point in self.span_length_quantiles]
        if points and (
            any(len(point) != 2 for point in points)
            or [q for q, _ in points] != sorted({q for q, _ in points})
            or points[0][0] != 0
            or points[-1][0] != 1
            or any(length < 0 for _, length in points)
            or [length for _, length in points] != sorted(length for _, length in points)
        ):
            raise ValueError(
                "span_length_quantiles must be (quantile, length) points with quantiles increasing from 0 to 1 and "
                f"lengths >= 0 and non-decreasing, got {self.span_length_quantiles}"
            )
        if not 0 <= self.global_fraction <= 1 or self.global_fraction + self.multi_hop_fraction > 1:
            raise ValueError(
                f"global_fraction must lie in [0, 1 - multi_hop_fraction], got {self.global_fraction} "
                f"(multi_hop_fraction {self.multi_hop_fraction})"
            )
        if not 1 <= self.global_spans[0] <= self.global_spans[1]:
            raise ValueError(f"global_spans must be a range (low, high) with 1 <= low <= high, got {self.global_spans}")
        if not 0 < self.max_span_fraction <= 1:
            raise ValueError(f"max_span_fraction must lie in (0, 1], got {self.max_span_fraction}")
        if self.max_distractors < 1:
            raise ValueError(f"max_distractors must be >= 1, got {self.max_distractors}")
        if not 0 <= self.uninformative_query_prob <= 1:
            raise ValueError(f"uninformative_query_prob must lie in [0, 1], got {self.uninformative_query_prob}")
        for name in (
            "distractor_strength",
            "query_quality",
            "cross_match",
            "peak_height",
            "base_level",
            "shot_length",
            "shot_std",
            "noise_std",
            "noise_smoothing",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(low, high)}")
        if self.shot_length[0] < 1:
            raise ValueError(f"shot_length must be >= 1 candidate, got {self.shot_length}")
        if self.num_options < 2:
            raise ValueError(f"num_options must be >= 2, got {self.num_options}")
        if not 0 <= self.max_hardness < 1:
            raise ValueError(f"max_hardness must lie in [0, 1), got {self.max_hardness}")
        if not self.coverage_exponent > 0:
            raise ValueError(f"coverage_exponent must be > 0, got {self.coverage_exponent}")
        if not 0 <= self.relation_fraction <= 1:
            raise ValueError(f"relation_fraction must lie in [0, 1], got {self.relation_fraction}")
        if not 0 <= self.relation_gap[0] <= self.relation_gap[1]:
            raise ValueError(f"relation_gap must be a range (low, high) with 0 <= low <= high, got {self.relation_gap}")
        if not 0 <= self.relation_after <= 1:
            raise ValueError(f"relation_after must lie in [0, 1], got {self.relation_after}")
        if not 0 <= self.relation_echo[0] <= self.relation_echo[1] <= 1:
            raise ValueError(f"relation_echo must be a range with 0 <= low <= high <= 1, got {self.relation_echo}")
        # The worst case must fit: every span at its longest cap plus a one-frame gap around each. A relation item
        # has one evidence span, its anchor beside it (the gap between them at its widest) and the look-alikes.
        cap = self._span_cap(self.min_frames)
        most_spans = max(self.max_hops, self.global_spans[1] if self.global_fraction else 0) + self.max_distractors
        widest = most_spans * (cap + 1) + 1
        if self.relation_fraction:
            widest = max(widest, (2 + self.max_distractors) * (cap + 1) + 1 + self.relation_gap[1])
        if widest > self.min_frames:
            raise ValueError(
                f"spans of up to {cap} frames ({most_spans} of them, or a relation item's anchor and gap of up to "
                f"{self.relation_gap[1]}) need {widest} frames but min_frames={self.min_frames}; lower "
                "max_span_fraction, max_distractors or relation_gap"
                if self.relation_fraction
                else f"{most_spans} spans of up to {cap} frames do not fit in min_frames={self.min_frames}; lower "
                "max_span_fraction or max_distractors"
            )

    def _span_cap(self, num_frames: int) -> int:
        """Longest span for a video of ``num_frames`` candidates."""
        return max(self.min_span_frames, min(self.max_span_frames, math.floor(self.max_span_fraction * num_frames)))


@dataclass(frozen=True)
class Span:
    """Candidates ``[start, end)``; for evidence, the answer needs ``frames_needed`` of them."""

    start: int
    end: int
    frames_needed: int = 1

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value to compare by
class SimulatedItem:
    """One simulated question: similarities, where the evidence and the look-alikes are, and the answer model.

    ``sim`` and ``difficulty`` are what a stage-1 trainer sees (:class:`msjoe.train.stage1.Stage1Item`); the rest is
    the ground truth the simulated answerer and the metrics use.
    """

    sim: torch.Tensor
    """``[Nq, T]`` float32 cosines."""
    evidence: tuple[Span, ...]
    """Spans the answer needs (see :meth:`coverage`)."""
    distractors: tuple[Span, ...]
    """Look-alike spans: they match one query each and carry no evidence."""
    kind: ItemKind
    """``single``, ``multi_hop``, ``global`` or ``relation`` (see :class:`SimulatorConfig`)."""
    query_targets: tuple[int | None, ...]
    """For each query row, the index of the evidence span it describes, or None for an uninformative query."""
    query_quality: tuple[float, ...]
    """For each query row, its quality in [0, 1] (0 for an uninformative query)."""
    distractor_queries: tuple[int, ...]
    """For each distractor, the query row it matches."""
    hardness: float
    """Frame-independent difficulty: P(correct) with full evidence is ``guess + (1 - guess)(1 - hardness)``."""
    num_options: int
    coverage_exponent: float
    difficulty: float
    """Pass rate with stratified uniform frames at ``budget`` (:meth:`uniform_pass_rate`); the stage-1 ``c``."""
    budget: int
    """The frame budget ``difficulty`` refers to."""
    seed: tuple[int, int]
    """``(split_seed, index)`` the item was generated from."""
    anchors: tuple[Span, ...] = ()
    """A relation item's anchor (the span its queries describe; the answer does not need it), else empty."""

    @property
    def num_frames(self) -> int:
        return int(self.sim.shape[1])

    @property
    def guess_rate(self) -> float:
        return 1.0 / self.num_options

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Evidence spans as ``(start, end)`` candidate indices, end exclusive (the :mod:`msjoe.sim` protocol)."""
        return [(span.start, span.end) for span in self.evidence]

    def p_correct(self, chosen: torch.Tensor | Sequence[int]) -> float:
        """The :mod:`msjoe.sim` protocol's answer model: :meth:`answer_probability`."""
        return self.answer_probability(chosen)

    def hits(self, indices: torch.Tensor | Sequence[int]) -> list[int]:
        """Chosen frames inside each evidence span (each distinct index counted once)."""
        chosen = _distinct_indices(indices, self.num_frames)
        return [int(((chosen >= span.start) & (chosen < span.end)).sum()) for span in self.evidence]

    def coverage(self, indices: torch.Tensor | Sequence[int]) -> float:
        """Evidence recall in [0, 1]: the mean over evidence spans of ``min(hits, needed) / needed``."""
        return self._coverage_of_hits(self.hits(indices))

    def span_hit_rate(self, indices: torch.Tensor | Sequence[int]) -> float:
        """Fraction of evidence spans with at least one chosen frame."""
        return sum(h > 0 for h in self.hits(indices)) / len(self.evidence)

    def answer_probability(self, indices: torch.Tensor | Sequence[int]) -> float:
        """The simulated MLLM's probability of answering correctly from these frames."""
        return self.probability_from_coverage(self.coverage(indices))

    def probability_from_coverage(self, coverage: float) -> float:
        """``guess + (1 - guess)(1 - hardness) · coverage ** exponent``; increasing in ``coverage`` in [0, 1]."""
        if not 0 <= coverage <= 1:
            raise ValueError(f"coverage must lie in [0, 1], got {coverage!r}")
        guess = self.guess_rate
        return guess + (1 - guess) * (1 - self.hardness) * coverage**self.coverage_exponent

    def uniform_pass_rate(self, k: int) -> float:
        """Exact expected P(correct) when one frame is drawn uniformly inside each of ``k`` equal bins.

        Bins are ``[floor(i T / k), floor((i + 1) T / k))``; spans do not overlap, so each bin's frame lands in at
        most one evidence span. A dynamic programme over the bins tracks the distribution of the hit counts per
        span, capped at what each span needs (at most ``4^3`` states for the default config).
        """
        if not is_int(k) or k < 1:
            raise ValueError(f"frame budget k must be a positive integer, got {k!r}")
        num_frames = self.num_frames
        if k >= num_frames:
            return self.answer_probability(range(num_frames))
        caps = [span.frames_needed for span in self.evidence]
        states: dict[tuple[int, ...], float] = {tuple(0 for _ in caps): 1.0}
        for i in range(k):
            low, high = (i * num_frames) // k, ((i + 1) * num_frames) // k
            size = high - low
            landing = [max(0, min(high, span.end) - max(low, span.start)) / size for span in self.evidence]
            if not any(landing):
                continue
            miss = 1.0 - sum(landing)
            updated: dict[tuple[int, ...], float] = {}
            for state, prob in states.items():
                if miss > 0:
                    updated[state] = updated.get(state, 0.0) + prob * miss
                for s, p_land in enumerate(landing):
                    if p_land == 0:
                        continue
                    nxt = list(state)
                    nxt[s] = min(caps[s], nxt[s] + 1)
                    key = tuple(nxt)
                    updated[key] = updated.get(key, 0.0) + prob * p_land
            states = updated
        return sum(
            prob * self.probability_from_coverage(self._coverage_of_hits(state)) for state, prob in states.items()
        )

    def _coverage_of_hits(self, hits: Sequence[int]) -> float:
        credit = [min(h, span.frames_needed) / span.frames_needed for h, span in zip(hits, self.evidence, strict=True)]
        return sum(credit) / len(credit)


class SimulatedAnswerer:
    """The simulated MLLM: answers correctly with :meth:`SimulatedItem.answer_probability`, by a seeded coin.

    Implements the stage-1 answerer interface ``answer_correct(item, chosen_indices) -> bool``
    (:class:`msjoe.train.stage1.Answerer`). Its generator is its own, so its coin flips do not depend on the
    trainer's sampling and vice versa.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def answer_correct(self, item: SimulatedItem, chosen_indices: torch.Tensor) -> bool:
        probability = item.answer_probability(chosen_indices)
        return bool(torch.rand((), generator=self.generator, dtype=torch.float64) < probability)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------
def generate_item(
    config: SimulatorConfig | None = None, *, split_seed: int = 0, index: int = 0, budget: int = 16
) -> SimulatedItem:
    """Item ``index`` of the split seeded by ``split_seed``; ``difficulty`` is its uniform pass rate at ``budget``.

    The same arguments always give the same item, on any machine (numpy's PCG64 seeded from
    ``(split_seed, index)``); different split seeds give independent items, which is how held-out splits are made.
    """
    config = config or SimulatorConfig()
    if split_seed < 0 or index < 0:
        raise ValueError(f"split_seed and index must be >= 0, got {split_seed} and {index}")
    rng = np.random.default_rng([split_seed, index])

    num_frames = round(math.exp(rng.uniform(math.log(config.min_frames), math.log(config.max_frames))))
    num_frames = min(config.max_frames, max(config.min_frames, num_frames))
    draw = rng.random()
    multi_hop = bool(draw < config.multi_hop_fraction)
    summary = not multi_hop and bool(draw < config.multi_hop_fraction + config.global_fraction)
    if multi_hop:
        num_evidence = int(rng.integers(2, config.max_hops + 1))
        needed = [1] * num_evidence
    elif summary:
        num_evidence = int(rng.integers(config.global_spans[0], config.global_spans[1] + 1))
        needed = [1] * num_evidence
    else:
        num_evidence = 1
        weights = np.asarray(config.frames_needed_weights, dtype=float)
        needed = [int(rng.choice(len(weights), p=weights / weights.sum())) + 1]
    num_distractors = int(rng.integers(1, config.max_distractors + 1))

    # Queries: the first rows cover every evidence span when there are enough of them; the rest describe a random
    # span (another aspect of the same moment). Any query may come out uninformative. Row order is then shuffled.
    num_queries = int(rng.integers(min(num_evidence, config.max_queries), config.max_queries + 1))
    targets: list[int | None] = [q if q < num_evidence else int(rng.integers(num_evidence)) for q in range(num_queries)]
    quality = [float(rng.uniform(*config.query_quality)) for _ in range(num_queries)]
    for q in range(num_queries):
        if rng.random() < config.uninformative_query_prob:
            targets[q], quality[q] = None, 0.0
    order = rng.permutation(num_queries)
    targets = [targets[q] for q in order]
    quality = [quality[q] for q in order]
    informative = [q for q in range(num_queries) if targets[q] is not None]

    # Spans: lengths log-uniform up to the cap, placed in random order with random gaps, never overlapping.
    cap = config._span_cap(num_frames)
    lengths = [min(cap, max(n, _span_length(rng, config, cap))) for n in [*needed, *[1] * num_distractors]]
    relation = _draw_relation(config, split_seed, index, cap) if not (multi_hop or summary) else None
    if relation is None:
        starts = _place_spans(rng, num_frames, lengths)
    else:  # the evidence, the gap and the anchor are placed as one block
        starts = _place_spans(rng, num_frames, [lengths[0] + relation.gap + relation.anchor_length, *lengths[1:]])
        block = starts[0]
        starts[0] = block + relation.anchor_length + relation.gap if relation.after else block
        lengths.append(relation.anchor_length)
        starts.append(block if relation.after else block + lengths[0] + relation.gap)
    evidence = tuple(Span(starts[s], starts[s] + lengths[s], needed[s]) for s in range(num_evidence))
    distractors = tuple(
        Span(starts[s], starts[s] + lengths[s]) for s in range(num_evidence, num_evidence + num_distractors)
    )
    anchors = (Span(starts[-1], starts[-1] + lengths[-1]),) if relation is not None else ()
    # A distractor copies one informative query (or any query when none is informative: it then matches
    # something the question does not ask for, still pulling raw-similarity samplers).
    distractor_queries = tuple(
        int(rng.choice(informative)) if informative else int(rng.integers(num_queries)) for _ in distractors
    )

    # Heights: query q gains quality_q * peak on the span it targets and cross * quality_q * peak on other evidence.
    peak = rng.uniform(*config.peak_height)
    cross = rng.uniform(*config.cross_match)
    heights = np.zeros((num_queries, len(lengths)))
    for q in informative:
        for s in range(num_evidence):
            heights[q, s] = quality[q] * peak * (1.0 if targets[q] == s else cross)
    for d, q in enumerate(distractor_queries):
        reference = quality[q] * peak if targets[q] is not None else float(rng.uniform(*config.query_quality)) * peak
        heights[q, num_evidence + d] = rng.uniform(*config.distractor_strength) * reference
    if relation is not None:  # the queries describe the anchor; the evidence only echoes them
        heights[:, -1] = heights[:, 0]
        heights[:, 0] *= relation.echo

    sim = _background(rng, config, num_queries, num_frames)
    time_axis = np.arange(num_frames)
    for s, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        window = _span_window(time_axis, start, start + length, config.edge_width)
        # Within an event the match varies a little from frame to frame (pose, occlusion).
        texture = 1.0 + 0.15 * _smooth_noise(rng, 1, num_frames, 2.0)[0]
        sim += heights[:, s : s + 1] * (window * texture)[None, :]

    hardness = float(rng.uniform(0.0, config.max_hardness))
    item = SimulatedItem(
        sim=torch.from_numpy(sim.astype(np.float32)),
        evidence=evidence,
        distractors=distractors,
        kind="multi_hop" if multi_hop else "global" if summary else "single" if relation is None else "relation",
        query_targets=tuple(targets),
        query_quality=tuple(quality),
        distractor_queries=distractor_queries,
        hardness=hardness,
        num_options=config.num_options,
        coverage_exponent=config.coverage_exponent,
        difficulty=float("nan"),
        budget=budget,
        seed=(split_seed, index),
        anchors=anchors,
    )
    # The difficulty is a property of the finished item, so it is filled in last (the dataclass is frozen).
    object.__setattr__(item, "difficulty", item.uniform_pass_rate(budget))
    return item


def generate_items(
    count: int, config: SimulatorConfig | None = None, *, split_seed: int = 0, budget: int = 16, start: int = 0
) -> list[SimulatedItem]:
    """Items ``start .. start + count - 1`` of the split ``split_seed`` (e.g. 0 for training, 1 for held-out)."""
    return [generate_item(config, split_seed=split_seed, index=i, budget=budget) for i in range(start, start + count)]


def item_stream(
    config: SimulatorConfig | None = None, *, split_seed: int = 0, budget: int = 16, start: int = 0
) -> Iterator[SimulatedItem]:
    """An endless stream of fresh items of one split (stage-1 training never sees an item twice)."""
    index = start
    while True:
        yield generate_item(config, split_seed=split_seed, index=index, budget=budget)
        index += 1


def _span_length(rng: np.random.Generator, config: SimulatorConfig, cap: int) -> int:
    """One span length in candidates (before the caller's floor and cap), see ``span_length_quantiles``."""
    if not config.span_length_quantiles:
        return math.floor(math.exp(rng.uniform(math.log(config.min_span_frames), math.log(cap + 1))))
    levels = [q for q, _ in config.span_length_quantiles]
    log_lengths = [math.log1p(length) for _, length in config.span_length_quantiles]
    return round(math.expm1(float(np.interp(rng.random(), levels, log_lengths))))


class _Relation(NamedTuple):
    gap: int
    anchor_length: int
    after: bool
    """The evidence follows the anchor (else it precedes it)."""
    echo: float


def _draw_relation(config: SimulatorConfig, split_seed: int, index: int, cap: int) -> _Relation | None:
    """How a single-span item's evidence relates to its anchor, when the item is a relation item.

    Drawn from a stream of its own, so a config's other items are the same with or without relation items."""
    if not config.relation_fraction:
        return None
    rng = np.random.default_rng([split_seed, index, 1])
    if rng.random() >= config.relation_fraction:
        return None
    gap = int(rng.integers(config.relation_gap[0], config.relation_gap[1] + 1))
    anchor_length = min(cap, max(config.min_span_frames, _span_length(rng, config, cap)))
    return _Relation(
        gap, anchor_length, bool(rng.random() < config.relation_after), float(rng.uniform(*config.relation_echo))
    )


def _place_spans(rng: np.random.Generator, num_frames: int, lengths: Sequence[int]) -> list[int]:
    """Start of each span: spans in random order, separated by random gaps of at least one frame."""
    slack = num_frames - sum(lengths) - (len(lengths) + 1)
    if slack < 0:
        raise ValueError(f"spans of lengths {list(lengths)} do not fit in {num_frames} frames")
    # Uniform random split of the slack into len + 1 gaps: sorted uniform cut points.
    cuts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))
    gaps = np.diff(np.concatenate([[0], cuts])) + 1
    starts = [0] * len(lengths)
    position = 0
    for gap, s in zip(gaps, rng.permutation(len(lengths)), strict=True):
        position += int(gap)
        starts[s] = position
        position += lengths[s]
    return starts


def _smooth_noise(rng: np.random.Generator, rows: int, length: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation, ``[rows, length]``."""
    radius = max(1, math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-6)) ** 2)
    kernel /= math.sqrt(float((kernel**2).sum()))  # unit variance for stationary white-noise input
    white = rng.standard_normal((rows, length + 2 * radius))
    return np.stack([np.convolve(row, kernel, mode="valid") for row in white])


def _background(rng: np.random.Generator, config: SimulatorConfig, num_queries: int, num_frames: int) -> np.ndarray:
    """Per-query base level + per-shot offsets (mostly shared across queries) + smooth noise + white noise."""
    base = rng.uniform(*config.base_level, size=(num_queries, 1))
    mean_shot = rng.uniform(*config.shot_length)
    shot_lengths = rng.geometric(1.0 / mean_shot, size=num_frames)
    boundaries = np.cumsum(shot_lengths)
    shot_of_frame = np.searchsorted(boundaries, np.arange(num_frames), side="right")
    num_shots = int(shot_of_frame[-1]) + 1
    shot_std = rng.uniform(*config.shot_std)
    shared = rng.standard_normal(num_shots)
    own = rng.standard_normal((num_queries, num_shots))
    shot_offsets = shot_std * (0.8 * shared[None, :] + 0.6 * own)  # 0.8^2 + 0.6^2 = 1: unit variance
    noise = rng.uniform(*config.noise_std) * _smooth_noise(
        rng, num_queries, num_frames, rng.uniform(*config.noise_smoothing)
    )
    white = config.white_noise_std * rng.standard_normal((num_queries, num_frames))
    return base + shot_offsets[:, shot_of_frame] + noise + white


def _span_window(time_axis: np.ndarray, start: int, end: int, edge_width: float) -> np.ndarray:
    """1 inside ``[start, end)``, Gaussian decay of width ``edge_width`` outside."""
    distance = np.maximum(np.maximum(start - time_axis, time_axis - (end - 1)), 0)
    return np.exp(-0.5 * (distance / max(edge_width, 1e-6)) ** 2)


def _distinct_indices(indices: torch.Tensor | Sequence[int], num_frames: int) -> torch.Tensor:
    chosen = torch.as_tensor(indices, dtype=torch.long).flatten().unique()
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= num_frames):
        raise ValueError(f"frame indices must lie in [0, {num_frames}), got {chosen.tolist()}")
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SelectionScores:
    """Mean metrics of one selector over a set of items at one budget, with standard errors of the means."""

    evidence_recall: float
    span_hit_rate: float
    accuracy: float
    """Mean expected P(correct) of the simulated answerer."""
    accuracy_stderr: float
    evidence_recall_stderr: float
    num_items: int
    per_item_accuracy: list[float] = field(repr=False, default_factory=list)
    """Expected P(correct) of each item, in item order (for paired comparisons)."""


def evaluate_sampler(
    sampler: Sampler | Callable[[torch.Tensor, int], torch.Tensor], items: Sequence[SimulatedItem], k: int
) -> SelectionScores:
    """Score a selector (a :class:`~msjoe.samplers.base.Sampler` or any ``f(sim, k) -> indices``) at budget ``k``.

    Stochastic samplers (Q-Frame) use their own default seed, as at inference.
    """
    if not items:
        raise ValueError("evaluate_sampler needs at least one item")
    select = sampler.select if isinstance(sampler, Sampler) else sampler
    recall, hit_rate, accuracy = [], [], []
    for item in items:
        check_similarity(item.sim, k)
        chosen = select(item.sim, k)
        if chosen.numel() != min(k, item.num_frames):
            raise ValueError(f"{sampler!r} returned {chosen.numel()} frames for k={k}, T={item.num_frames}")
        recall.append(item.coverage(chosen))
        hit_rate.append(item.span_hit_rate(chosen))
        accuracy.append(item.answer_probability(chosen))
    return SelectionScores(
        evidence_recall=float(np.mean(recall)),
        span_hit_rate=float(np.mean(hit_rate)),
        accuracy=float(np.mean(accuracy)),
        accuracy_stderr=_stderr(accuracy),
        evidence_recall_stderr=_stderr(recall),
        num_items=len(items),
        per_item_accuracy=accuracy,
    )


def _stderr(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
