"""Exact checks of the pure selection rules against hand-computed and brute-force references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from msjoe.samplers.selection import (
    default_nms_radius,
    gumbel_topk,
    independent_log_prob,
    plackett_luce_log_prob,
    quantile_indices,
    quantile_levels,
    replace_duplicates,
    topk_indices,
    topk_nms,
)


def sequential_draw_probability(probs: list[float], order: tuple[int, ...]) -> float:
    """P(order) when drawing without replacement: each draw renormalises over the frames left."""
    left = 1.0
    result = 1.0
    for i in order:
        result *= probs[i] / left
        left -= probs[i]
    return result


# --- gumbel_topk -------------------------------------------------------------------------------------------


def test_gumbel_topk_draw_frequencies_match_plackett_luce() -> None:
    probs = [0.1, 0.2, 0.3, 0.4]
    logits = torch.tensor(probs, dtype=torch.float64).log()
    generator = torch.Generator().manual_seed(1234)
    draws = 20_000
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(draws):
        order = tuple(gumbel_topk(logits, 2, generator=generator).tolist())
        counts[order] = counts.get(order, 0) + 1
    outcomes = list(itertools.permutations(range(4), 2))
    assert set(counts) <= set(outcomes)
    chi_square = 0.0
    for order in outcomes:
        expected = draws * sequential_draw_probability(probs, order)
        chi_square += (counts.get(order, 0) - expected) ** 2 / expected
    # 11 degrees of freedom: P(chi2 > 31.26) = 0.001 for a correct sampler. A sampler that ignored the draw order
    # (e.g. sorted the pair) or drew with replacement would be far above it.
    assert chi_square < 31.26


def test_gumbel_topk_returns_draw_order_not_time_order() -> None:
    # One dominant late frame is drawn first almost surely: the first index returned is the draw, not the earliest.
    logits = torch.tensor([0.0, 0.0, 50.0])
    generator = torch.Generator().manual_seed(0)
    assert gumbel_topk(logits, 2, generator=generator)[0].item() == 2


@pytest.mark.parametrize(("num_frames", "k"), [(1, 1), (5, 3), (5, 5), (5, 9), (40, 7)])
def test_gumbel_topk_distinct_and_budget(num_frames: int, k: int) -> None:
    logits = torch.randn(num_frames, generator=torch.Generator().manual_seed(num_frames))
    drawn = gumbel_topk(logits, k, generator=torch.Generator().manual_seed(7))
    assert drawn.dtype == torch.long
    assert len(drawn) == min(k, num_frames) == len(set(drawn.tolist()))
    again = gumbel_topk(logits, k, generator=torch.Generator().manual_seed(7))
    assert torch.equal(drawn, again)


# --- plackett_luce_log_prob --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_plackett_luce_matches_brute_force_enumeration(k: int) -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7], dtype=torch.float64)
    probs = torch.softmax(logits, 0).tolist()
    total = 0.0
    for order in itertools.permutations(range(5), k):
        log_p = plackett_luce_log_prob(logits, torch.tensor(order)).item()
        assert log_p == pytest.approx(math.log(sequential_draw_probability(probs, order)), abs=1e-12)
        total += math.exp(log_p)
    assert total == pytest.approx(1.0, abs=1e-12)


def test_plackett_luce_full_order_of_one_frame_is_certain() -> None:
    assert plackett_luce_log_prob(torch.tensor([3.0]), torch.tensor([0])).item() == pytest.approx(0.0, abs=1e-7)


def test_plackett_luce_is_shift_invariant_and_stable_for_peaked_logits() -> None:
    # float32, one frame 20 nats above the rest: after it is drawn the remaining mass is ~1e-9 of the total.
    logits = torch.tensor([20.0, 0.0, 0.0, 0.0])
    expected = torch.log_softmax(logits.double(), 0)[0].item() + math.log(1 / 3)
    assert plackett_luce_log_prob(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)
    assert plackett_luce_log_prob(logits + 1000.0, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-4)
    # The improbable order: a flat frame first (1 in e^20 + 3), then the dominant one among the three left.
    improbable = math.log(1 / (math.exp(20) + 3)) + math.log(math.exp(20) / (math.exp(20) + 2))
    assert plackett_luce_log_prob(logits, torch.tensor([1, 0])).item() == pytest.approx(improbable, abs=1e-5)


@pytest.mark.parametrize("order", [[3, 0, 5], [5], [2, 4, 0, 1, 3, 5]])
def test_plackett_luce_gradient_passes_gradcheck(order: list[int]) -> None:
    logits = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    index = torch.tensor(order)
    assert torch.autograd.gradcheck(lambda x: plackett_luce_log_prob(x, index), (logits,))


def test_plackett_luce_of_a_single_draw_equals_log_softmax() -> None:
    logits = torch.tensor([0.5, 1.5, -2.0], dtype=torch.float64)
    assert plackett_luce_log_prob(logits, torch.tensor([1])).item() == pytest.approx(
        torch.log_softmax(logits, 0)[1].item(), abs=1e-12
    )


# --- independent_log_prob ----------------------------------------------------------------------------------


def test_independent_log_prob_hand_computed_value_and_gradient() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    logits = probs.log().requires_grad_(True)
    value = independent_log_prob(logits, torch.tensor([3, 1]))
    assert value.item() == pytest.approx(math.log(0.4) + math.log(0.2), abs=1e-12)
    value.backward()
    # d/dl_j sum_k log p(x_k) = [j drawn] - K p_j
    expected = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64) - 2 * probs
    assert torch.allclose(logits.grad, expected, atol=1e-12)


def test_independent_log_prob_differs_from_plackett_luce_after_the_first_draw() -> None:
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()
    order = torch.tensor([3, 1])
    exact = math.log(0.4) + math.log(0.2 / 0.6)
    assert plackett_luce_log_prob(logits, order).item() == pytest.approx(exact, abs=1e-12)
    assert independent_log_prob(logits, order).item() < exact


# --- deterministic rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [
        ([0.1, 0.9, 0.5, 0.7], 2, [1, 3]),
        ([1.0, 3.0, 3.0, 2.0, 3.0], 2, [1, 2]),  # three-way tie: the earlier frames win
        ([2.0, 2.0, 2.0], 1, [0]),
        ([0.5, 0.1], 5, [0, 1]),  # budget above T: every frame
        ([-1.0, -3.0, -2.0], 2, [0, 2]),
    ],
)
def test_topk_indices(scores: list[float], k: int, expected: list[int]) -> None:
    assert topk_indices(torch.tensor(scores), k).tolist() == expected


@pytest.mark.parametrize(
    ("scores", "k", "radius", "expected"),
    [
        # 5 (score 6) blocks 4..6; 1 (score 5) blocks 0..2; 2 is suppressed; 3 is free.
        ([0.0, 5.0, 4.0, 3.0, 0.0, 6.0], 2, 1, [1, 5]),
        ([0.0, 5.0, 4.0, 3.0, 0.0, 6.0], 3, 1, [1, 3, 5]),
        # radius 0 is plain top-K
        ([0.0, 5.0, 4.0, 3.0, 0.0, 6.0], 3, 0, [1, 2, 5]),
        # everything is blocked after the first pick: the best suppressed frames fill the budget
        ([1.0, 2.0, 3.0, 4.0], 3, 5, [1, 2, 3]),
        # radius 2 around 3 blocks 1..5; 0 and 6 are free; 7 is free too but 6 blocks it once taken
        ([5.0, 1.0, 2.0, 9.0, 8.0, 7.0, 4.0, 3.5], 3, 2, [0, 3, 6]),
        # ties go to the earlier frame, also when suppression decides
        ([1.0, 1.0, 1.0, 1.0, 1.0], 2, 1, [0, 2]),
        ([3.0], 4, 2, [0]),
    ],
)
def test_topk_nms(scores: list[float], k: int, radius: int, expected: list[int]) -> None:
    assert topk_nms(torch.tensor(scores), k, radius).tolist() == expected


def test_quantile_levels_are_midpoints() -> None:
    assert quantile_levels(4).tolist() == [0.125, 0.375, 0.625, 0.875]
    assert quantile_levels(1).tolist() == [0.5]


@pytest.mark.parametrize(
    ("probs", "k", "levels", "expected"),
    [
        # cdf [0.1, 0.3, 0.6, 1.0]; levels 0.25, 0.75 -> frames 1, 3
        ([0.1, 0.2, 0.3, 0.4], 2, None, [1, 3]),
        # a level exactly on a cdf value belongs to that frame (cdf[i-1] < u <= cdf[i])
        ([0.25, 0.25, 0.25, 0.25], 2, [0.25, 0.5], [0, 1]),
        # unnormalised weights are normalised first
        ([1.0, 2.0, 3.0, 4.0], 2, None, [1, 3]),
        # both levels hit frame 1; the repeat goes to the nearest unused frame, the more probable neighbour (2)
        ([0.05, 0.85, 0.1], 2, None, [1, 2]),
        # equal neighbours: the earlier one
        ([0.05, 0.9, 0.05], 2, None, [0, 1]),
        # levels 0.125..0.875 hit 0, 0, 1, 1: repeats move to the nearest free frames, including zero-mass ones
        ([0.5, 0.5, 0.0, 0.0], 4, None, [0, 1, 2, 3]),
        # zero-mass frames are never picked by a level when a frame with mass covers it
        ([0.0, 0.5, 0.0, 0.5, 0.0], 2, None, [1, 3]),
    ],
)
def test_quantile_indices(probs: list[float], k: int, levels: list[float] | None, expected: list[int]) -> None:
    level_tensor = None if levels is None else torch.tensor(levels, dtype=torch.float64)
    assert quantile_indices(torch.tensor(probs), k, level_tensor).tolist() == expected


@pytest.mark.parametrize(
    ("picks", "scores", "expected"),
    [
        ([2, 2, 2, 2], [0.0, 0.1, 1.0, 0.3, 0.2], [2, 3, 1, 4]),  # 3 beats 1 on score; then 1; then 4 at distance 2
        ([2, 2, 2], [0.0, 0.5, 1.0, 0.5, 0.0], [2, 1, 3]),  # equal scores at equal distance: earlier first
        ([0, 0, 0], [1.0, 0.0, 0.0, 0.0], [0, 1, 2]),  # at the edge the only neighbours are on one side
        ([4, 1, 4], [0.0, 0.0, 0.0, 0.0, 0.0], [4, 1, 3]),
        ([1, 3], [0.0, 0.0, 0.0, 0.0], [1, 3]),  # nothing to replace
    ],
)
def test_replace_duplicates(picks: list[int], scores: list[float], expected: list[int]) -> None:
    assert replace_duplicates(picks, torch.tensor(scores)) == expected


def test_default_nms_radius() -> None:
    assert default_nms_radius(100, 8) == 3  # floor(100 / 32)
    assert default_nms_radius(10, 8) == 0


@pytest.mark.parametrize("num_frames", [1, 2, 7, 64])
@pytest.mark.parametrize("k", [1, 3, 8, 100])
def test_deterministic_rules_return_sorted_distinct_budget(num_frames: int, k: int) -> None:
    generator = torch.Generator().manual_seed(num_frames * 1000 + k)
    # Rounded scores make ties common, the case where the rules are most likely to repeat a frame.
    scores = torch.round(torch.rand(num_frames, generator=generator) * 4) / 4
    probs = torch.softmax(scores * 3, 0)
    results = {
        "topk": topk_indices(scores, k),
        "nms": topk_nms(scores, k, default_nms_radius(num_frames, k)),
        "nms_wide": topk_nms(scores, k, num_frames),
        "quantile": quantile_indices(probs, k),
    }
    for name, indices in results.items():
        values = indices.tolist()
        assert indices.dtype == torch.long, name
        assert len(values) == min(k, num_frames), name
        assert values == sorted(set(values)), name
        assert all(0 <= i < num_frames for i in values), name
