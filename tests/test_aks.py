"""AKS's score treatments: the reference min-max scores and the ``"match"`` probability for CLIP-like cosines."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from msjoe.samplers import get_sampler
from msjoe.samplers.aks import AKSSampler, Segment, match_probability, robust_z_scores


def gaussian_background(num_frames: int) -> list[float]:
    """Standard normal quantiles in a fixed scrambled order: a deterministic, noise-like background, median 0."""
    quantiles = [statistics.NormalDist().inv_cdf((i + 0.5) / num_frames) for i in range(num_frames)]
    order = sorted(range(num_frames), key=lambda i: (i * 7919) % num_frames)  # 7919 is prime: a permutation
    return [quantiles[j] for j in order]


def cosines_with_a_peak(num_frames: int, peak: range, height: float) -> torch.Tensor:
    """``[1, T]`` CLIP-like cosines: base 0.2, background noise 0.01, ``height`` noise widths more on ``peak``."""
    values = [0.2 + 0.01 * z for z in gaussian_background(num_frames)]
    for t in peak:
        values[t] = 0.2 + 0.01 * height
    return torch.tensor([values], dtype=torch.float64)


def test_match_keeps_a_genuine_peak_whole_where_minmax_splits_to_the_leaves() -> None:
    # 200 frames of noise-like background (|z| <= 2.8) and a 10-frame event 7 noise widths up; K = 8.
    sim = cosines_with_a_peak(200, range(130, 140), 7.0)
    k = 8
    minmax, match = AKSSampler(), AKSSampler(scores="match")
    # Min-max: the background's normalised mean is ~0.29 (2.8 / 9.8) and no segment clears t1 = 0.8, so
    # every segment splits down to the depth cap floor(log2 8) = 3: one frame per eighth, i.e. bin-max.
    minmax_segments = minmax.segments(minmax.frame_scores(sim), k)
    assert [segment.depth for segment in minmax_segments] == [3] * 8
    # Match: background ~sigmoid(z - 3) (mean ~0.07), the event sigmoid(4) = 0.98: the whole video is kept.
    match_scores = match.frame_scores(sim)
    top = torch.topk(match_scores, k).values.mean()
    assert float(top - match_scores.mean()) > 0.8
    assert match.segments(match_scores, k) == [Segment(0, 200, 0)]
    # ... and its eight frames all come from the event, where min-max spends one.
    assert all(130 <= t < 140 for t in match.select(sim.float(), k).tolist())
    assert sum(130 <= t < 140 for t in minmax.select(sim.float(), k).tolist()) == 1  # leaf [125, 150)


def test_match_does_not_keep_a_peak_that_is_no_outlier() -> None:
    # The same event only 2 noise widths up sits inside the background's own range: no segment is kept whole.
    sim = cosines_with_a_peak(200, range(130, 140), 2.0)
    match = AKSSampler(scores="match")
    assert [segment.depth for segment in match.segments(match.frame_scores(sim), 8)] == [3] * 8


def test_robust_z_scores_match_median_and_mad_by_brute_force() -> None:
    generator = torch.Generator().manual_seed(3)
    sim = torch.rand(3, 41, generator=generator, dtype=torch.float64) * 0.3 + 0.1
    z = robust_z_scores(sim)
    for row, z_row in zip(sim.tolist(), z.tolist(), strict=True):
        median = sorted(row)[(len(row) - 1) // 2]
        mad = sorted(abs(v - median) for v in row)[(len(row) - 1) // 2]
        for value, z_value in zip(row, z_row, strict=True):
            assert z_value == pytest.approx((value - median) / (1.4826 * mad), rel=1e-12)
    threshold = 2.5
    expected = [1 / (1 + math.exp(-(max(column) - threshold))) for column in zip(*z.tolist(), strict=True)]
    assert match_probability(sim, threshold).tolist() == pytest.approx(expected, rel=1e-12)


def test_robust_z_scores_fall_back_when_most_of_a_row_is_one_value() -> None:
    # 5 of 7 values equal: MAD = 0, so sigma = sqrt(pi / 2) * mean |s - median| = sqrt(pi / 2) * 3 / 7.
    row = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    sigma = math.sqrt(math.pi / 2) * 3 / 7
    assert robust_z_scores(row).tolist()[0] == pytest.approx([0, 0, 0, 0, 0, 1 / sigma, 2 / sigma], rel=1e-12)
    # a constant row carries no evidence: zeros, not a division by zero
    assert robust_z_scores(torch.full((2, 5), 0.3, dtype=torch.float64)).tolist() == [[0.0] * 5] * 2


def test_match_standardises_each_query_so_a_flat_high_row_does_not_drown_a_peak() -> None:
    # Row 0: high base level (0.30) with small noise, no event. Row 1: base 0.20 with a 10-frame event at +0.07.
    # The raw max over queries is row 0 everywhere, so "minmax" cannot see the event; "match" keeps it whole.
    background = torch.tensor(gaussian_background(200), dtype=torch.float64)
    flat_high = 0.30 + 0.01 * background
    peaked_low = 0.20 + 0.01 * background.roll(37)
    peaked_low[130:140] = 0.27
    sim = torch.stack([flat_high, peaked_low])
    picks = get_sampler("aks", scores="match").select(sim.float(), 8).tolist()
    assert all(130 <= t < 140 for t in picks)
    # min-max: the event row never reaches the max, so the choice is that of the flat row alone
    minmax = get_sampler("aks")
    assert torch.equal(minmax.select(sim.float(), 8), minmax.select(flat_high[None].float(), 8))


def test_match_on_a_constant_similarity_splits_to_the_leaves_like_minmax() -> None:
    for scores in ("minmax", "match"):
        picks = get_sampler("aks", scores=scores).select(torch.full((1, 64), 0.3), 8)
        assert picks.tolist() == list(range(0, 64, 8)), scores


@pytest.mark.parametrize("num_queries", [1, 3])
def test_match_choice_is_invariant_to_shift_and_positive_scale(num_queries: int) -> None:
    generator = torch.Generator().manual_seed(num_queries)
    sim = torch.stack([torch.randperm(200, generator=generator) for _ in range(num_queries)]).float()
    sim[0, 50:60] = 1000.0 + torch.arange(10.0)  # an outlying event, so that the judge has something to keep
    sampler = get_sampler("aks", scores="match")
    for k in (4, 8, 16):
        reference = sampler.select(sim, k)
        assert torch.equal(sampler.select(sim + 7.0, k), reference), k
        assert torch.equal(sampler.select(sim * 3.0, k), reference), k
        assert torch.equal(sampler.select(sim * 0.5 - 40.0, k), reference), k
    assert sampler.segments(sampler.frame_scores(sim), 8) == [Segment(0, 200, 0)]


def test_aks_rejects_bad_score_options() -> None:
    with pytest.raises(ValueError, match="scores must be one of 'minmax', 'match', got 'softmax'"):
        get_sampler("aks", scores="softmax")
    for bad in (float("nan"), float("inf"), "3", True):
        with pytest.raises(ValueError, match="match_threshold"):
            get_sampler("aks", scores="match", match_threshold=bad)


def test_repr_names_the_score_treatment() -> None:
    assert "scores='match', match_threshold=2.5" in repr(get_sampler("aks", scores="match", match_threshold=2.5))
