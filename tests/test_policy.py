"""The U-Sampler's policy (msjoe.samplers.policy): exact log-probabilities against brute-force enumeration, draws
against the exact distribution, greedy against the modes, the suppression width, and its use by stage 1."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from msjoe.samplers import policy
from msjoe.samplers.selection import plackett_luce_log_prob
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.sim.planted import SimulatedAnswerer, generate_items
from msjoe.train.stage1 import Stage1Config, Stage1Trainer


def reference_probability(logits: list[float], order: tuple[int, ...], width: int) -> float:
    """P(order) written out from the definition, step by step, in plain Python."""
    picks: list[int] = []
    probability = 1.0
    for x in order:
        unpicked = [t for t in range(len(logits)) if t not in picks]
        available = [t for t in unpicked if all(abs(t - p) > width for p in picks)] or unpicked
        if x not in available:
            return 0.0
        probability *= math.exp(logits[x]) / sum(math.exp(logits[t]) for t in available)
        picks.append(x)
    return probability


def all_orders(num_frames: int, k: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(num_frames), k))


CASES = [(5, 1, 0), (5, 2, 1), (6, 3, 1), (7, 3, 2), (6, 4, 1), (5, 5, 2), (7, 2, 0), (6, 3, 0)]


@pytest.mark.parametrize(("num_frames", "k", "width"), CASES)
def test_log_prob_is_exact_against_enumeration(num_frames: int, k: int, width: int) -> None:
    logits = torch.randn(num_frames, generator=torch.Generator().manual_seed(num_frames * 100 + k * 10 + width))
    logits = logits.double()
    total = 0.0
    for order in all_orders(num_frames, k):
        expected = reference_probability(logits.tolist(), order, width)
        total += expected
        if expected == 0.0:
            with pytest.raises(ValueError, match="was not drawn with this suppression width"):
                policy.log_prob(logits, torch.tensor(order), width)
        else:
            assert policy.log_prob(logits, torch.tensor(order), width).exp().item() == pytest.approx(
                expected, rel=1e-12
            )
    assert total == pytest.approx(1.0, abs=1e-12)  # the valid orders carry all the mass


def test_width_zero_is_plackett_luce() -> None:
    logits = torch.randn(40, generator=torch.Generator().manual_seed(3))
    order = torch.tensor([7, 3, 30, 12, 0])
    torch.testing.assert_close(policy.log_prob(logits, order, 0), plackett_luce_log_prob(logits, order))


def test_log_prob_is_differentiable() -> None:
    logits = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    order = torch.tensor([4, 0, 8])  # valid for width 2: 0 and 8 are more than 2 away from 4
    assert torch.autograd.gradcheck(lambda x: policy.log_prob(x, order, 2), (logits,))


def test_draw_frequencies_match_the_exact_distribution() -> None:
    num_frames, k, width = 5, 2, 1
    logits = torch.tensor([0.5, 1.5, 0.0, 1.0, -0.5])
    generator = torch.Generator().manual_seed(0)
    draws = 40_000
    counts = Counter(tuple(policy.draw(logits, k, width, generator).tolist()) for _ in range(draws))
    for order in all_orders(num_frames, k):
        expected = reference_probability(logits.tolist(), order, width)
        # 4 standard errors of a frequency estimate (max sd 0.5 / sqrt(draws) = 0.0025).
        assert counts[order] / draws == pytest.approx(expected, abs=0.01), order
    assert all(abs(a - b) > width for a, b in counts)  # never two neighbours while others remain


@pytest.mark.parametrize(("num_frames", "k", "width"), [(300, 32, 2), (50, 10, 2), (5, 5, 2), (12, 6, 3), (1, 3, 4)])
def test_draw_and_greedy_return_distinct_frames_and_respect_suppression(num_frames: int, k: int, width: int) -> None:
    logits = torch.randn(num_frames, generator=torch.Generator().manual_seed(num_frames))
    for order in (policy.draw(logits, k, width, torch.Generator().manual_seed(1)), policy.greedy(logits, k, width)):
        picks = order.tolist()
        assert len(picks) == len(set(picks)) == min(k, num_frames)
        # Each pick was available when made: its probability under the policy is positive.
        assert math.isfinite(policy.log_prob(logits.double(), order, width).item())
        if (2 * width + 1) * min(k, num_frames) <= num_frames // 2:  # room for every pick: suppression never lapses
            assert all(abs(a - b) > width for a, b in itertools.combinations(picks, 2))


@pytest.mark.parametrize(("num_frames", "k"), [(5, 2), (6, 3), (7, 3)])
def test_greedy_without_suppression_is_the_mode(num_frames: int, k: int) -> None:
    for seed in range(20):
        logits = torch.randn(num_frames, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        mode = max(all_orders(num_frames, k), key=lambda order: reference_probability(logits.tolist(), order, 0))
        assert tuple(policy.greedy(logits, k, 0).tolist()) == mode


@pytest.mark.parametrize(("num_frames", "k", "width"), [(6, 3, 1), (7, 3, 2), (6, 2, 1)])
def test_greedy_takes_the_mode_of_each_conditional(num_frames: int, k: int, width: int) -> None:
    """With suppression, each greedy pick is the most probable next frame given the earlier picks (conditionals
    computed from the enumerated joint distribution, not from the implementation)."""
    for seed in range(20):
        logits = torch.randn(num_frames, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        joint = {order: reference_probability(logits.tolist(), order, width) for order in all_orders(num_frames, k)}
        picks = policy.greedy(logits, k, width).tolist()
        for step in range(k):
            prefix = tuple(picks[:step])
            next_mass = Counter()
            for order, probability in joint.items():
                if order[:step] == prefix:
                    next_mass[order[step]] += probability
            assert picks[step] == max(next_mass, key=lambda x: (next_mass[x], -x))


def test_greedy_can_differ_from_the_joint_mode_under_suppression() -> None:
    """The documented limit: picking the best frame blocks its neighbours, so a chain of conditional modes is not
    always the most probable sequence. Logits (0, 0.1, 0), width 1, K = 2: greedy takes frame 1, after which both
    others are blocked and the fallback splits the mass; (0, 2) keeps the second step certain."""
    logits = torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64)
    greedy_order = tuple(policy.greedy(logits, 2, 1).tolist())
    assert greedy_order == (1, 0)
    assert reference_probability(logits.tolist(), greedy_order, 1) < reference_probability(logits.tolist(), (0, 2), 1)


@pytest.mark.parametrize(
    ("num_frames", "k", "fraction", "expected"),
    [(3600, 32, 0.25, 28), (3600, 8, 0.25, 112), (300, 8, 0.25, 9), (100, 8, 0.25, 3), (10, 8, 0.25, 0),
     (3600, 32, 0.0, 0), (3600, 32, 0.5, 56), (20, 40, 0.25, 0), (7200, 64, 0.25, 28)],
)  # fmt: skip
def test_suppression_width_scales_with_t_and_k(num_frames: int, k: int, fraction: float, expected: int) -> None:
    assert policy.suppression_width(num_frames, k, fraction) == expected


def test_suppression_width_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fraction"):
        policy.suppression_width(100, 8, -0.1)
    with pytest.raises(ValueError, match="num_frames"):
        policy.suppression_width(0, 8, 0.25)
    with pytest.raises(ValueError, match="width"):
        policy.greedy(torch.zeros(5), 2, -1)


def test_the_sampler_selects_with_the_width_it_trains_with() -> None:
    sampler = USampler(config=USamplerConfig(widths=(8,), suppression=0.5), seed=0)
    sim = 0.2 + 0.05 * torch.rand(2, 400, generator=torch.Generator().manual_seed(0))
    width = sampler.suppression_width(400, 8)
    assert width == 25
    chosen = sampler.select(sim, 8)
    logits = sampler.logits(sim).detach()
    torch.testing.assert_close(chosen, torch.sort(policy.greedy(logits, 8, width)).values)
    draw = sampler.sample(sim, 8, generator=torch.Generator().manual_seed(0))
    assert all(abs(a - b) > width for a, b in itertools.combinations(draw.order.tolist(), 2))


class RecordingAnswerer(SimulatedAnswerer):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.choices: list[tuple[int, list[int]]] = []

    def answer_correct(self, item, chosen_indices):  # type: ignore[no-untyped-def]
        self.choices.append((item.num_frames, chosen_indices.tolist()))
        return super().answer_correct(item, chosen_indices)


def test_stage1_trains_on_the_same_policy() -> None:
    sampler = USampler(config=USamplerConfig(widths=(8,), suppression=0.5), seed=0)
    answerer = RecordingAnswerer()
    config = Stage1Config(steps=1, k=8, batch_size=2, samples_per_item=4, warmup_steps=0)
    Stage1Trainer(sampler, answerer, config).train(generate_items(2, split_seed=5, budget=8))
    assert len(answerer.choices) == 8
    for num_frames, chosen in answerer.choices:
        width = sampler.suppression_width(num_frames, 8)
        assert width > 0 and all(b - a > width for a, b in itertools.pairwise(chosen))
