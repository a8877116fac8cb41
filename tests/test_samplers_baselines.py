"""The sampler contract (every registered sampler) and exact hand-computed cases for the six baselines."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from msjoe.samplers import MAX_QUERIES, available_samplers, get_sampler
from msjoe.samplers.aks import AKSSampler, Segment, min_max_normalise
from msjoe.samplers.binmax import bin_edges
from msjoe.samplers.bolt import bolt_levels, bolt_probabilities
from msjoe.samplers.unet1d import row_zscores
from msjoe.samplers.uniform import uniform_indices

# The U-Sampler needs a trained network and has its own tests; every other sampler builds with no options.
CONTRACT_SAMPLERS = [name for name in available_samplers() if name != "usampler"]
BASELINES = ["aks", "binmax", "bolt", "qframe", "topk", "uniform"]
RANK_ONLY_SAMPLERS = ["aks", "binmax", "bolt", "topk"]  # choices depend only on the ordering of similarities


def random_similarity(num_queries: int, num_frames: int, seed: int) -> torch.Tensor:
    """Cosine-like values in [-0.2, 0.4], the range CLIP produces."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_queries, num_frames, generator=generator) * 0.6 - 0.2


def test_all_baselines_are_registered() -> None:
    assert set(BASELINES) <= set(available_samplers())
    assert [name for name in BASELINES if not get_sampler(name).needs_queries] == ["uniform"]


# --- the contract ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTRACT_SAMPLERS)
def test_contract_budget_distinct_sorted(name: str) -> None:
    sampler = get_sampler(name)
    for num_frames in (1, 2, 7, 50, 301):
        for num_queries in range(1, MAX_QUERIES + 1):
            sim = random_similarity(num_queries, num_frames, seed=num_frames * 10 + num_queries)
            for k in (1, 2, 3, 8, 32, 400):
                indices = sampler.select(sim, k, generator=torch.Generator().manual_seed(0))
                values = indices.tolist()
                context = f"{name}: T={num_frames}, Nq={num_queries}, k={k}"
                assert indices.dtype == torch.long and indices.ndim == 1, context
                assert indices.device == sim.device, context
                assert len(values) == min(k, num_frames), context
                assert values == sorted(set(values)), context
                assert all(0 <= i < num_frames for i in values), context


@pytest.mark.parametrize("name", CONTRACT_SAMPLERS)
def test_contract_seeded_and_default_determinism(name: str) -> None:
    sampler = get_sampler(name)
    sim = random_similarity(3, 120, seed=5)
    first = sampler.select(sim, 16, generator=torch.Generator().manual_seed(11))
    second = sampler.select(sim, 16, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first, second)
    # Without a generator, inference is reproducible too.
    assert torch.equal(sampler.select(sim, 16), sampler.select(sim, 16))


@pytest.mark.parametrize("name", CONTRACT_SAMPLERS)
@pytest.mark.parametrize(("num_frames", "k"), [(5, 5), (5, 6), (3, 64), (1, 1), (1, 8)])
def test_contract_budget_covering_all_frames_returns_all(name: str, num_frames: int, k: int) -> None:
    sim = random_similarity(2, num_frames, seed=1)
    assert get_sampler(name).select(sim, k).tolist() == list(range(num_frames))


@pytest.mark.parametrize("name", CONTRACT_SAMPLERS)
def test_contract_constant_similarity_is_valid_and_deterministic(name: str) -> None:
    sampler = get_sampler(name)
    sim = torch.full((2, 40), 0.25)
    picks = sampler.select(sim, 8)
    assert len(picks) == 8 and picks.tolist() == sorted(set(picks.tolist()))
    assert torch.equal(picks, sampler.select(sim, 8))


@pytest.mark.parametrize("name", CONTRACT_SAMPLERS)
@pytest.mark.parametrize(
    ("sim", "k", "message"),
    [
        (torch.tensor([[0.1, float("nan"), 0.3]]), 2, "NaN or infinite"),
        (torch.tensor([[0.1, 0.2, float("inf")]]), 2, "NaN or infinite"),
        (torch.tensor([[0.1, 0.2, -float("inf")]]), 2, "NaN or infinite"),
        (torch.zeros(MAX_QUERIES + 1, 6), 2, "1 to 4 query rows"),
        (torch.zeros(0, 6), 2, "1 to 4 query rows"),
        (torch.zeros(1, 0), 2, "no candidate frames"),
        (torch.zeros(1, 2, 3), 2, "shape"),
        (torch.zeros(1, 6), 0, "positive integer"),
        (torch.zeros(1, 6), -3, "positive integer"),
        (torch.zeros(1, 6), 2.0, "positive integer"),
        (torch.zeros(1, 6), True, "positive integer"),
    ],
)
def test_contract_rejects_bad_input(name: str, sim: torch.Tensor, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_sampler(name).select(sim, k)


@pytest.mark.parametrize("name", CONTRACT_SAMPLERS)
def test_contract_accepts_float64_and_one_row_vectors_and_leaves_input_untouched(name: str) -> None:
    sampler = get_sampler(name)
    sim = random_similarity(1, 60, seed=9)
    reference = sampler.select(sim, 8)
    as_double = sim.double()
    assert torch.equal(sampler.select(as_double, 8), reference)
    assert torch.equal(sampler.select(sim[0], 8), reference)
    before = sim.clone()
    sampler.select(sim, 8)
    assert torch.equal(sim, before)


# --- uniform -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "k", "expected"),
    [
        (10, 4, [1, 3, 6, 8]),  # floor((2i + 1) * 10 / 8) = floor(1.25, 3.75, 6.25, 8.75)
        (6, 5, [0, 1, 3, 4, 5]),  # floor(0.6, 1.8, 3.0, 4.2, 5.4)
        (9, 3, [1, 4, 7]),  # bin centres of [0, 3), [3, 6), [6, 9)
        (100, 1, [50]),
        (4, 9, [0, 1, 2, 3]),
    ],
)
def test_uniform_bin_centres(num_frames: int, k: int, expected: list[int]) -> None:
    assert uniform_indices(num_frames, k).tolist() == expected
    sim = random_similarity(1, num_frames, seed=0)
    assert get_sampler("uniform").select(sim, k).tolist() == expected


def test_uniform_is_distinct_for_every_budget_up_to_t() -> None:
    for num_frames in range(1, 70):
        for k in range(1, num_frames + 1):
            picks = uniform_indices(num_frames, k).tolist()
            assert len(set(picks)) == k and picks == sorted(picks), (num_frames, k)


def test_uniform_ignores_similarity_values() -> None:
    sampler = get_sampler("uniform")
    assert torch.equal(sampler.select(random_similarity(1, 50, 1), 7), sampler.select(random_similarity(4, 50, 2), 7))


# --- top-k -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sim", "k", "expected"),
    [
        # max over queries = [0.8, 0.9, 0.2, 0.3]
        ([[0.1, 0.9, 0.2, 0.3], [0.8, 0.0, 0.1, 0.2]], 2, [0, 1]),
        ([[0.1, 0.9, 0.2, 0.3], [0.8, 0.0, 0.1, 0.2]], 3, [0, 1, 3]),
        # ties: the earlier frames
        ([[0.5, 0.5, 0.5, 0.5, 0.5]], 3, [0, 1, 2]),
        ([[-0.1, -0.3, -0.2]], 1, [0]),
    ],
)
def test_topk_hand_cases(sim: list[list[float]], k: int, expected: list[int]) -> None:
    assert get_sampler("topk").select(torch.tensor(sim), k).tolist() == expected


# --- bin-max -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "num_bins", "expected"),
    [(10, 3, [0, 3, 6, 10]), (7, 3, [0, 2, 4, 7]), (8, 8, list(range(9))), (5, 1, [0, 5])],
)
def test_bin_edges(num_frames: int, num_bins: int, expected: list[int]) -> None:
    assert bin_edges(num_frames, num_bins) == expected


@pytest.mark.parametrize(
    ("sim", "k", "expected"),
    [
        # bins [0,3) [3,6) [6,10): argmax 1; tie between 3 and 4 -> 3; 8
        ([[0.1, 0.5, 0.2, 0.9, 0.9, 0.1, 0.0, 0.0, 0.3, 0.2]], 3, [1, 3, 8]),
        # the second query wins frame 6 in the last bin (max over queries)
        ([[0.1, 0.5, 0.2, 0.9, 0.9, 0.1, 0.0, 0.0, 0.3, 0.2], [0, 0, 0, 0, 0, 0, 0.7, 0, 0, 0]], 3, [1, 3, 6]),
        # bins [0,2) [2,4) [4,7)
        ([[0.0, 0.1, 0.3, 0.2, 0.0, 0.0, 0.5]], 3, [1, 2, 6]),
        # constant: first frame of each bin
        ([[0.2] * 10], 3, [0, 3, 6]),
    ],
)
def test_binmax_hand_cases(sim: list[list[float]], k: int, expected: list[int]) -> None:
    assert get_sampler("binmax").select(torch.tensor(sim), k).tolist() == expected


# --- standardised rows (binmax-z, topk-z) -------------------------------------------------------------------

# Query A has a small peak at frame 1 (and a bump at 2) on a high band; query B a large, lone peak at frame 4 on a low
# band. Raw maxima follow A's band everywhere; standardised rows let B's peak win.
TWO_BANDS = [[0.30, 0.32, 0.31, 0.30, 0.30, 0.30], [0.10, 0.10, 0.10, 0.10, 0.20, 0.10]]


def test_row_zscores_by_hand() -> None:
    """(s - mean) / (population std + 0.001), clipped to +-8, row by row."""
    rows = torch.tensor(TWO_BANDS, dtype=torch.float64)
    expected = []
    for row in TWO_BANDS:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / len(row))
        expected.append([max(-8.0, min(8.0, (x - mean) / (std + 1e-3))) for x in row])
    assert torch.allclose(row_zscores(rows), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert torch.equal(row_zscores(torch.full((1, 5), 0.3)), torch.zeros(1, 5))  # a flat row carries nothing
    spike = torch.zeros(1, 1000)
    spike[0, 0] = 1.0
    assert row_zscores(spike)[0, 0] == 8.0  # sqrt(999) would be 31.6: clipped


@pytest.mark.parametrize(
    ("name", "k", "expected"),
    [
        ("topk", 1, [1]),
        ("topk-z", 1, [4]),
        ("binmax", 2, [1, 3]),
        ("binmax-z", 2, [1, 4]),
        ("topk-z", 2, [1, 4]),
        ("nms-z", 1, [4]),
    ],
)
def test_standardised_rows_let_a_low_band_query_win(name: str, k: int, expected: list[int]) -> None:
    # z of A at 1: 0.015 / (0.00764 + 0.001) = 1.74; z of B at 4: 0.0833 / (0.0373 + 0.001) = 2.18
    assert get_sampler(name).select(torch.tensor(TWO_BANDS), k).tolist() == expected


@pytest.mark.parametrize("name", ["binmax-z", "topk-z", "nms-z"])
def test_standardised_samplers_ignore_each_rows_band(name: str) -> None:
    """Shifting one query's cosines and widening another's changes nothing once rows are standardised (the floor
    of 0.001 on the std is small next to these spreads)."""
    sim = random_similarity(3, 200, seed=4) * 10
    moved = sim * torch.tensor([[1.0], [3.0], [0.5]]) + torch.tensor([[5.0], [-2.0], [0.0]])
    sampler = get_sampler(name)
    for k in (4, 16):
        assert torch.equal(sampler.select(moved, k), sampler.select(sim, k)), k


def test_rows_option_is_checked_when_the_sampler_is_built() -> None:
    with pytest.raises(ValueError, match="rows must be 'raw' or 'zscore', got 'robust'"):
        get_sampler("binmax", rows="robust")
    assert get_sampler("topk", rows="zscore").select(torch.tensor(TWO_BANDS), 1).tolist() == [4]


# --- BOLT --------------------------------------------------------------------------------------------------


def test_bolt_probabilities_hand_computed() -> None:
    # min-max: [0, 1, 0, 0, 0.5, 1]; squared: [0, 1, 0, 0, 0.25, 1]; sum 2.25
    scores = torch.tensor([0.1, 0.3, 0.1, 0.1, 0.2, 0.3], dtype=torch.float64)
    expected = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.25, 1.0], dtype=torch.float64) / 2.25
    assert torch.allclose(bolt_probabilities(scores, 2.0), expected, atol=1e-12)
    # constant scores: uniform, no division by zero
    assert torch.equal(bolt_probabilities(torch.full((4,), 0.3), 2.5), torch.full((4,), 0.25, dtype=torch.float64))


def test_bolt_levels() -> None:
    assert torch.allclose(bolt_levels(3), torch.tensor([1 / 3, 1 / 2, 2 / 3], dtype=torch.float64))
    assert torch.allclose(bolt_levels(5), torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8], dtype=torch.float64))
    # the paper's formula degenerates for k <= 2 ([1.0] and [0.5, 0.5]); midpoints instead
    assert bolt_levels(1).tolist() == [0.5]
    assert bolt_levels(2).tolist() == [0.25, 0.75]
    assert bolt_levels(4, "midpoint").tolist() == [0.125, 0.375, 0.625, 0.875]


@pytest.mark.parametrize(
    ("sim", "alpha", "k", "quantiles", "expected"),
    [
        # p = [0, 4/9, 0, 0, 1/9, 4/9], cdf = [0, .444, .444, .444, .556, 1]; levels 1/3, 1/2, 2/3 -> 1, 4, 5
        ([0.1, 0.3, 0.1, 0.1, 0.2, 0.3], 2.0, 3, "bolt", [1, 4, 5]),
        # k = 1: the median level 0.5 -> frame 4; k = 2: levels 0.25, 0.75 -> frames 1, 5
        ([0.1, 0.3, 0.1, 0.1, 0.2, 0.3], 2.0, 1, "bolt", [4]),
        ([0.1, 0.3, 0.1, 0.1, 0.2, 0.3], 2.0, 2, "bolt", [1, 5]),
        # p = s / 1.7, cdf = [.059, .176, .765, .941, .941, 1]; all four levels (.25 ... .75) land on frame 2.
        # Repeats go to the nearest unused frame: 3 (p .18) beats 1 (p .12); then 1; then 0 (p .06) beats 4 (p 0).
        ([0.1, 0.2, 1.0, 0.3, 0.0, 0.1], 1.0, 4, "bolt", [0, 1, 2, 3]),
        # constant similarity, T = 8: uniform p, cdf = (i + 1) / 8; levels 1/3, 1/2, 2/3 -> 2, 3, 5
        ([0.4] * 8, 2.5, 3, "bolt", [2, 3, 5]),
        # midpoint levels 1/6, 1/2, 5/6 -> 1, 3, 6
        ([0.4] * 8, 2.5, 3, "midpoint", [1, 3, 6]),
    ],
)
def test_bolt_hand_cases(sim: list[float], alpha: float, k: int, quantiles: str, expected: list[int]) -> None:
    sampler = get_sampler("bolt", alpha=alpha, quantiles=quantiles)
    assert sampler.select(torch.tensor([sim], dtype=torch.float64), k).tolist() == expected


def test_bolt_large_alpha_concentrates_and_zero_alpha_spreads() -> None:
    sim = torch.tensor([[0.0] * 10 + [1.0, 0.9, 0.8] + [0.0] * 10])
    # alpha = 0: uniform mass, the same frames as on a constant similarity
    flat = get_sampler("bolt", alpha=0.0).select(sim, 4)
    assert torch.equal(flat, get_sampler("bolt").select(torch.zeros(1, 23), 4))
    # a huge alpha puts almost all mass on the peak: the picks are the peak and its nearest frames
    assert get_sampler("bolt", alpha=50.0).select(sim, 3).tolist() == [9, 10, 11]


def test_bolt_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="alpha"):
        get_sampler("bolt", alpha=-1.0)
    with pytest.raises(ValueError, match="quantiles"):
        get_sampler("bolt", quantiles="random")


# --- Q-Frame -----------------------------------------------------------------------------------------------


def test_qframe_is_gumbel_topk_of_log_softmax_with_the_callers_noise() -> None:
    sim = random_similarity(2, 30, seed=4)
    tau, scale, k = 0.8, 100.0, 6
    log_pi = torch.log_softmax(sim.max(dim=0).values.double() * scale / tau, dim=0)
    # The same seeded generator reproduces the sampler's noise: one float64 uniform per frame.
    uniform = torch.rand(30, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform))
    expected = torch.sort(torch.topk(log_pi + gumbel, k).indices).values
    sampler = get_sampler("qframe", tau=tau, logit_scale=scale)
    assert torch.equal(sampler.select(sim, k, generator=torch.Generator().manual_seed(21)), expected)


def test_qframe_default_noise_uses_the_documented_seed() -> None:
    sim = random_similarity(1, 40, seed=2) * 0.01  # nearly flat, so the noise decides
    assert torch.equal(get_sampler("qframe").select(sim, 5), get_sampler("qframe").select(sim, 5))
    assert torch.equal(
        get_sampler("qframe", seed=3).select(sim, 5),
        get_sampler("qframe").select(sim, 5, generator=torch.Generator().manual_seed(3)),
    )
    assert not torch.equal(get_sampler("qframe", seed=3).select(sim, 5), get_sampler("qframe", seed=4).select(sim, 5))


def test_qframe_draw_frequencies_follow_softmax_of_scaled_logits() -> None:
    probs = [0.1, 0.2, 0.3, 0.4]
    # logit_scale * s / tau = log(probs)  =>  pi = probs
    tau, scale = 0.8, 100.0
    sim = torch.tensor([[math.log(p) * tau / scale for p in probs]])
    sampler = get_sampler("qframe", tau=tau, logit_scale=scale)
    generator = torch.Generator().manual_seed(99)
    draws = 3000
    counts = [0, 0, 0, 0]
    for _ in range(draws):
        counts[sampler.select(sim, 1, generator=generator).item()] += 1
    chi_square = sum((c - draws * p) ** 2 / (draws * p) for c, p in zip(counts, probs, strict=True))
    assert chi_square < 16.27  # 3 degrees of freedom, P = 0.001


def test_qframe_temperature_limits() -> None:
    sim = random_similarity(1, 50, seed=8)
    # tau -> 0: deterministic top-K
    greedy = get_sampler("qframe", tau=1e-6)
    assert torch.equal(
        greedy.select(sim, 5, generator=torch.Generator().manual_seed(1)), get_sampler("topk").select(sim, 5)
    )
    # on raw cosines (scale 1) pi is nearly uniform: over many seeds, the low half is drawn about as often
    raw = get_sampler("qframe", logit_scale=1.0)
    order = torch.argsort(sim[0])
    low = set(order[:25].tolist())
    drawn_low = sum(
        len(low & set(raw.select(sim, 4, generator=torch.Generator().manual_seed(s)).tolist())) for s in range(200)
    )
    assert 0.35 < drawn_low / 800 < 0.5


def test_qframe_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="tau"):
        get_sampler("qframe", tau=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        get_sampler("qframe", logit_scale=-100.0)


# --- AKS ---------------------------------------------------------------------------------------------------

# First half flat at 0.9 (never peaked), second half [1, 1, 1, 1, 0, 0, 0, 0].
# With K = 4 (top-m = 4) and t1 = 0.4:
#   whole video: mean(top-4) - mean = 1 - (7.2 + 4) / 16 = 0.3  -> split
#   first half:  0.9 - 0.9 = 0                                -> split to the depth cap floor(log2 4) = 2
#   second half: 1 - 0.5 = 0.5 > 0.4                           -> kept at depth 1, worth floor(4 / 2) = 2 frames
AKS_CRAFTED = [0.9] * 8 + [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_aks_judge_and_split_decisions() -> None:
    sampler = AKSSampler(relevance_threshold=0.4)
    scores = min_max_normalise(torch.tensor(AKS_CRAFTED, dtype=torch.float64))
    assert sampler.segments(scores, 4) == [Segment(0, 4, 2), Segment(4, 8, 2), Segment(8, 16, 1)]
    # leaves of the flat half give their first frame (ties -> earlier); the kept half gives its top 2
    assert sampler.select(torch.tensor([AKS_CRAFTED]), 4).tolist() == [0, 4, 8, 9]
    # an unmet std condition keeps nothing by relevance: everything splits to depth 2, one frame per quarter
    strict = AKSSampler(relevance_threshold=0.4, std_threshold=10.0)
    assert strict.segments(scores, 4) == [Segment(0, 4, 2), Segment(4, 8, 2), Segment(8, 12, 2), Segment(12, 16, 2)]
    assert strict.select(torch.tensor([AKS_CRAFTED]), 4).tolist() == [0, 4, 8, 12]


def test_aks_keeps_a_sparse_peaked_video_whole_with_the_default_threshold() -> None:
    # 6 ones among 40 frames: mean(top-6) - mean = 1 - 0.15 = 0.85 > 0.8 -> kept at depth 0, i.e. top-K
    scores = [0.0] * 40
    for i in (3, 4, 5, 20, 30, 31):
        scores[i] = 1.0
    sampler = get_sampler("aks")
    assert sampler.segments(torch.tensor(scores, dtype=torch.float64), 6) == [Segment(0, 40, 0)]
    assert sampler.select(torch.tensor([scores]), 6).tolist() == [3, 4, 5, 20, 30, 31]


def test_aks_fills_the_budget_left_by_rounding_with_the_best_remaining_frames() -> None:
    # K = 3 caps the depth at 1. Whole video: mean(top-3) - mean = 0.8 - 3.0 / 16 = 0.6125 -> split.
    # Each half (depth 1) is worth floor(3 / 2) = 1 frame: 1 (0.9) and 11 (1.0); the third is the best left, 15.
    scores = [0.1, 0.9, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0, 0.5]
    assert get_sampler("aks").select(torch.tensor([scores]), 3).tolist() == [1, 11, 15]
    # constant similarity, K = 6 (depth cap 2): quarters give 0, 10, 20, 30; the earliest remaining fill up
    assert get_sampler("aks").select(torch.full((1, 40), 0.3), 6).tolist() == [0, 1, 2, 10, 20, 30]


def test_aks_depth_is_capped_so_every_leaf_is_worth_a_frame() -> None:
    # The reference code at depth 5 with K = 8 gives floor(8 / 32) = 0 frames to every leaf of a flat video.
    # Capped at floor(log2 8) = 3: eight leaves of 8 frames, one frame each.
    picks = get_sampler("aks", max_depth=5).select(torch.full((1, 64), 0.3), 8)
    assert picks.tolist() == list(range(0, 64, 8))
    # A smaller max_depth is respected: depth 1 -> 2 leaves worth 4 frames each (the first four of each half).
    shallow = get_sampler("aks", max_depth=1).select(torch.full((1, 64), 0.3), 8)
    assert shallow.tolist() == [0, 1, 2, 3, 32, 33, 34, 35]


def test_aks_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        get_sampler("aks", max_depth=-1)
    with pytest.raises(ValueError, match="top_m"):
        get_sampler("aks", top_m=0)


# --- invariances -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RANK_ONLY_SAMPLERS)
@pytest.mark.parametrize("num_queries", [1, 3])
def test_choice_is_invariant_to_shift_and_positive_scale(name: str, num_queries: int) -> None:
    # Distinct integers are exact in float32 under + 7 and * 3, so any difference would be the sampler's.
    generator = torch.Generator().manual_seed(num_queries)
    sim = torch.stack([torch.randperm(200, generator=generator) for _ in range(num_queries)]).float()
    sampler = get_sampler(name)
    for k in (4, 16, 32):
        reference = sampler.select(sim, k)
        assert torch.equal(sampler.select(sim + 7.0, k), reference), (name, k)
        assert torch.equal(sampler.select(sim * 3.0, k), reference), (name, k)
        assert torch.equal(sampler.select(sim * 0.5 - 40.0, k), reference), (name, k)


# --- nms-z: the U-Sampler's prior through its policy, without the network ---------------------------------------


def spaced_top_k_by_hand(scores: list[float], k: int, width: int) -> list[int]:
    """K picks, each the highest score (earliest on ties) not within ``width`` of an earlier pick; when suppression
    has blocked every unpicked frame, the highest unpicked one."""
    picks: list[int] = []
    for _ in range(k):
        open_frames = [i for i in range(len(scores)) if all(abs(i - p) > width for p in picks)]
        pool = open_frames or [i for i in range(len(scores)) if i not in picks]
        picks.append(max(pool, key=lambda i: (scores[i], -i)))
    return sorted(picks)


@pytest.mark.parametrize(("num_frames", "k", "suppression"), [(40, 4, 0.125), (100, 8, 0.5), (30, 7, 1.0), (9, 4, 2.0)])
def test_nms_z_is_spaced_top_k_of_the_standardised_maximum(num_frames: int, k: int, suppression: float) -> None:
    for seed in range(5):
        sim = random_similarity(3, num_frames, seed)
        scores = row_zscores(sim).max(dim=0).values.tolist()
        width = math.floor(suppression * num_frames / k)
        chosen = get_sampler("nms-z", suppression=suppression).select(sim, k).tolist()
        assert chosen == spaced_top_k_by_hand(scores, k, width), (seed, width)


def test_nms_z_suppression_keeps_picks_apart_and_zero_is_top_k() -> None:
    sim = random_similarity(2, 400, seed=3)
    chosen = get_sampler("nms-z").select(sim, 8).tolist()  # width floor(0.125 * 400 / 8) = 6
    assert min(b - a for a, b in itertools.pairwise(chosen)) > 6
    assert torch.equal(get_sampler("nms-z", suppression=0.0).select(sim, 8), get_sampler("topk-z").select(sim, 8))
    with pytest.raises(ValueError, match=r"suppression fraction must be a finite number >= 0, got -0\.5"):
        get_sampler("nms-z", suppression=-0.5)


def test_nms_z_equals_a_u_sampler_whose_network_adds_nothing_to_its_prior() -> None:
    """With the head's weights zeroed, the U-Sampler's logits are its prior (the max-over-queries z-score, gain 1),
    and its greedy policy reading picks exactly what nms-z picks."""
    usampler = get_sampler("usampler", seed=0)
    with torch.no_grad():
        usampler.module.head.weight.zero_()
    nms_z = get_sampler("nms-z")
    for num_queries, num_frames, k in [(1, 300, 8), (3, 1000, 16), (4, 64, 32)]:
        sim = random_similarity(num_queries, num_frames, seed=num_frames)
        assert torch.equal(usampler.select(sim, k), nms_z.select(sim, k)), (num_queries, num_frames, k)
