"""Exact checks of the pure RL functions (rewards, advantages, losses) against hand-computed references."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from msjoe.rl import (
    RewardWeights,
    answer_is_correct,
    difficulty_advantage,
    group_advantages,
    info_reward,
    informative_fraction,
    informative_queries,
    peak_prominence,
    ppo_clip_token_loss,
    reinforce_loss,
    rollout_follows_format,
    rollout_reward,
    sampler_advantages,
    sampler_log_prob,
)
from msjoe.rl.rewards import DEFAULT_INFO_THRESHOLD
from msjoe.rl.seeding import derive_seed

F64 = torch.float64
LN2 = math.log(2.0)


def f64(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# --- difficulty_advantage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "difficulty", "expected"),
    [
        (True, 0.25, 4.0),  # 1 / 0.25
        (False, 0.25, -4 / 3),  # -1 / (1 - 0.25)
        (True, 0.5, 2.0),  # 1 / 0.5
        (False, 0.5, -2.0),  # -1 / 0.5
        (True, 1.0, 1.0),  # everyone solves it: 1 / 1
        (False, 0.0, -1.0),  # nobody solves it, failing costs little: -1 / (1 - 0)
        (True, 0.0, 10.0),  # paper: c = 0 and correct -> 10 (1/0 = inf, clipped)
        (False, 1.0, -10.0),  # ours, symmetric: -1/0 = -inf, clipped
        (True, 0.05, 10.0),  # 1 / 0.05 = 20, clipped to 10
        (False, 0.95, -10.0),  # -1 / 0.05 = -20, clipped to -10
        (True, 0.125, 8.0),  # 1 / 0.125 = 8, inside the clip
    ],
)
def test_difficulty_advantage_hand_values(correct: bool, difficulty: float, expected: float) -> None:
    advantage = difficulty_advantage(correct, f64(difficulty))
    assert advantage.dtype == F64 and advantage.shape == ()
    assert advantage.item() == expected


def test_difficulty_advantage_clip_parameter_sets_the_c0_value() -> None:
    assert difficulty_advantage(True, 0.0, clip=5.0).item() == 5.0
    assert difficulty_advantage(False, 1.0, clip=5.0).item() == -5.0
    assert difficulty_advantage(True, 0.25, clip=3.0).item() == 3.0  # 4 clipped to 3
    assert difficulty_advantage(True, 0.25, clip=100.0).item() == 4.0


def test_difficulty_advantage_is_vectorised_and_broadcasts() -> None:
    correct = torch.tensor([[True], [False], [True]])  # [3, 1]
    difficulty = f64([0.0, 0.25, 0.5, 1.0])  # [4]
    advantage = difficulty_advantage(correct, difficulty)
    assert advantage.shape == (3, 4)
    hit = [10.0, 4.0, 2.0, 1.0]
    miss = [-1.0, -4 / 3, -2.0, -10.0]
    assert advantage.tolist() == [hit, miss, hit]
    # 0/1 integers are accepted as booleans; python floats give the default dtype
    assert difficulty_advantage(torch.tensor([1, 0]), 0.5).tolist() == [2.0, -2.0]
    assert difficulty_advantage(True, 0.5).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("bad", [1.2, -0.1, float("nan")])
def test_difficulty_advantage_rejects_pass_rates_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match=r"difficulty.*\[0, 1\].*" + ("nan" if math.isnan(bad) else str(bad))):
        difficulty_advantage(True, bad)
    with pytest.raises(ValueError, match=r"at index \(2,\)"):
        difficulty_advantage(torch.tensor([True, True, True]), f64([0.5, 0.1, bad]))


@pytest.mark.parametrize("difficulty", [0.15, 0.5, 0.8])
def test_group_mean_baseline_leaves_centred_correctness_weighted_by_difficulty(difficulty: float) -> None:
    """docs/decisions.md: A = r/c - (1-r)/(1-c) = r/(c(1-c)) - 1/(1-c), so A - mean(A) = (r - mean r)/(c(1-c)) while
    no clip binds (c in [1/clip, 1 - 1/clip]): the difficulty only weights the item."""
    for correct in itertools.product([False, True], repeat=4):
        advantages = difficulty_advantage(torch.tensor(correct), f64([difficulty]))
        r = f64([float(x) for x in correct])
        expected = (r - r.mean()) / (difficulty * (1 - difficulty))
        torch.testing.assert_close(advantages - advantages.mean(), expected, rtol=1e-12, atol=1e-12)


def test_difficulty_advantage_of_a_probability_is_the_expected_advantage() -> None:
    # c = 0.25: A = 4 if correct, -4/3 if wrong; q = 0.5 -> 0.5 * 4 - 0.5 * 4/3 = 4/3.
    assert difficulty_advantage(0.5, 0.25).item() == pytest.approx(4 / 3, rel=1e-6)
    # c = 0.05: correct 20 -> clipped 10, wrong -1/0.95; q = 0.3 -> each part clipped first.
    assert difficulty_advantage(0.3, 0.05, clip=10.0).item() == pytest.approx(0.3 * 10 - 0.7 / 0.95, rel=1e-6)
    # The mean of many coin flips with probability q converges to it.
    flips = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.3
    sampled = difficulty_advantage(flips, f64([0.2])).mean().item()
    assert sampled == pytest.approx(difficulty_advantage(0.3, 0.2).item(), abs=0.02)
    # A 0/1 probability is the bool case exactly, including c = 0 and c = 1 (no 0 * inf).
    for c in (0.0, 0.5, 1.0):
        assert difficulty_advantage(1.0, c).item() == difficulty_advantage(True, c).item()
        assert difficulty_advantage(0.0, c).item() == difficulty_advantage(False, c).item()


def test_difficulty_advantage_rejects_bad_correct_and_clip() -> None:
    with pytest.raises(ValueError, match="correct"):
        difficulty_advantage(torch.tensor([1.5]), 0.5)
    with pytest.raises(ValueError, match="correct"):
        difficulty_advantage(-0.1, 0.5)
    with pytest.raises(ValueError, match="clip"):
        difficulty_advantage(True, 0.5, clip=0.0)
    with pytest.raises(ValueError, match="clip"):
        difficulty_advantage(True, 0.5, clip=float("inf"))


# --- informative queries -----------------------------------------------------------------------------------


def test_peak_prominence_hand_computed() -> None:
    # sorted: 0 0 1 1 1 1 2 9 -> median (1 + 1)/2 = 1; |s - 1| sorted: 0 0 0 0 1 1 1 8 -> MAD (0 + 1)/2 = 0.5
    # prominence = (9 - 1) / (1.4826 * 0.5)
    peaked = [0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 9.0, 1.0]
    # median 3.5; |s - 3.5| sorted .5 .5 1.5 1.5 2.5 2.5 3.5 3.5 -> MAD (1.5 + 2.5)/2 = 2; (7 - 3.5) / (1.4826 * 2)
    ramp = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    prominence = peak_prominence(f64([peaked, ramp]))
    torch.testing.assert_close(prominence, f64([8 / (1.4826 * 0.5), 3.5 / (1.4826 * 2)]), rtol=1e-15, atol=0)
    assert informative_queries(f64([peaked, ramp])).tolist() == [True, False]  # 10.79 > 5, 1.18 < 5


def test_threshold_is_a_parameter() -> None:
    peaked = f64([0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 9.0, 1.0])  # prominence 10.79
    assert informative_queries(peaked, threshold=10.0).item()
    assert not informative_queries(peaked, threshold=11.0).item()
    assert DEFAULT_INFO_THRESHOLD == 5.0


def test_constant_rows_single_frames_and_dips_are_not_informative() -> None:
    rows = f64([[0.2] * 6, [-0.4] * 6, [5.0, 5.0, 5.0, 5.0, 5.0, 0.0]])  # constant, constant, a dip (max = median)
    assert peak_prominence(rows).tolist() == [0.0, 0.0, 0.0]
    assert informative_queries(rows).tolist() == [False, False, False]
    single = f64([[0.3], [-0.1]])  # T = 1
    assert peak_prominence(single).tolist() == [0.0, 0.0]
    assert informative_queries(single).tolist() == [False, False]


def test_a_peak_over_a_tied_bulk_is_informative() -> None:
    row = f64([1.0, 1.0, 1.0, 1.0, 2.0])  # MAD = 0, max > median
    assert peak_prominence(row).item() == math.inf
    assert informative_queries(row).item()
    # the absolute floor ignores jitter on a row that is constant up to rounding
    jitter = f64([0.25, 0.25, 0.25, 0.25, 0.25 + 1e-9])
    assert informative_queries(jitter).item()
    assert not informative_queries(jitter, min_gap=1e-6).item()


def test_negative_cosines_are_handled_where_the_paper_ratio_fails() -> None:
    row = f64([-0.3, -0.3, -0.29, -0.31, 0.1])
    assert row.max() / row.min() < 0  # the paper's max/min > 10 would call this peak uninformative
    # median -0.3, |s + 0.3| sorted 0 0 .01 .01 .4 -> MAD 0.01; (0.1 + 0.3) / (1.4826 * 0.01) = 26.98
    torch.testing.assert_close(peak_prominence(row), f64(0.4 / (1.4826 * 0.01)), rtol=1e-12, atol=0)
    assert informative_queries(row).item()


def test_informativeness_is_invariant_to_shift_and_positive_scale() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = 0.2 + 0.02 * torch.randn(6, 50, generator=generator, dtype=F64)
    rows[0, 10] += 0.2  # a clear peak
    rows[1, 20:23] += 0.08  # a moderate event
    rows[2, :25] += 0.1  # half the video matches: not a peak
    base = peak_prominence(rows)
    flags = informative_queries(rows)
    assert flags[0] and not flags[2]
    for shift, scale in [(0.37, 1.0), (-1.0, 1.0), (0.0, 3.0), (0.0, 0.01), (-0.5, 7.5)]:
        moved = (rows + shift) * scale
        torch.testing.assert_close(peak_prominence(moved), base, rtol=1e-9, atol=0)
        assert torch.equal(informative_queries(moved), flags)


def test_informative_fraction_and_info_reward() -> None:
    peaked = [0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 9.0, 1.0]
    flat = [0.5] * 8
    ramp = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    sim = f64([peaked, flat, ramp, peaked])  # 2 of 4 informative
    assert informative_fraction(sim).item() == 0.5
    assert info_reward(sim).item() == 0.1 * 0.5
    assert info_reward(sim, weight=0.2).item() == 0.2 * 0.5
    batched = torch.stack([sim, f64([peaked, peaked, peaked, flat])])  # [2, Nq = 4, T = 8]
    assert informative_queries(batched).shape == (2, 4)
    assert informative_fraction(batched).tolist() == [0.5, 0.75]
    assert informative_fraction(torch.zeros(0, 8, dtype=F64)).item() == 0.0  # no queries: nothing informative


def test_informative_queries_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        informative_queries(f64([[0.1, float("nan"), 0.2]]))
    with pytest.raises(ValueError, match="T >= 1"):
        informative_queries(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="threshold"):
        informative_queries(f64([[0.1, 0.2]]), threshold=-1.0)
    with pytest.raises(ValueError, match=r"\[\.\.\., Nq, T\]"):
        informative_fraction(f64([0.1, 0.2]))


# --- rollout reward ----------------------------------------------------------------------------------------


def test_rollout_reward_hand_values() -> None:
    full = rollout_reward(True, True, True, f64(0.5))  # 1 + 0.5 + 0.1 * 0.5
    assert (full.accuracy.item(), full.format.item(), full.info.item()) == (1.0, 0.5, 0.1 * 0.5)
    assert full.total.item() == 1.0 + 0.5 + 0.1 * 0.5
    # the format part needs both turns in format
    assert rollout_reward(True, True, False, f64(1.0)).total.item() == 1.0 + 0.0 + 0.1
    assert rollout_reward(True, False, True, f64(0.0)).total.item() == 1.0
    assert rollout_reward(False, True, True, f64(1.0)).total.item() == 0.0 + 0.5 + 0.1
    paper = rollout_reward(True, True, True, f64(1.0), RewardWeights(accuracy=0.8, format=1.0, info=0.1))
    assert paper.total.item() == 0.8 + 1.0 + 0.1
    # a python float gives the default dtype
    assert rollout_reward(True, True, True, 0.5).total.dtype == torch.get_default_dtype()


def test_rollout_reward_is_vectorised() -> None:
    parts = rollout_reward(
        torch.tensor([True, False, True]), torch.tensor([True, True, False]), True, f64([0.25, 1.0, 0.0])
    )
    assert parts.total.shape == (3,)
    torch.testing.assert_close(parts.total, f64([1 + 0.5 + 0.025, 0 + 0.5 + 0.1, 1 + 0 + 0]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("weights", [RewardWeights(), RewardWeights(accuracy=0.8)])
def test_default_weights_order_rollouts_lexicographically(weights: RewardWeights) -> None:
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    outcomes = list(itertools.product([False, True], [False, True], fractions))
    total = {o: rollout_reward(o[0], o[1], o[1], o[2], weights).total.item() for o in outcomes}
    for a, b in itertools.product(outcomes, repeat=2):
        if a[0] and not b[0]:
            assert total[a] > total[b]  # correctness first, whatever format and queries
        elif a[0] == b[0] and a[1] and not b[1]:
            assert total[a] > total[b]  # then format


def test_rollout_reward_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="info_fraction"):
        rollout_reward(True, True, True, 1.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [  # each message names the field, what it must be and the value given
        ({"accuracy": -0.5}, "accuracy must be a finite number >= 0, got -0.5"),
        ({"format": -1.0}, "format must be a finite number >= 0, got -1.0"),
        ({"info": math.nan}, "info must be a finite number >= 0, got nan"),
        ({"info": math.inf}, "info must be a finite number >= 0, got inf"),
        ({"accuracy": "1"}, "accuracy must be a finite number >= 0, got '1'"),
        ({"format": True}, "format must be a finite number >= 0, got True"),
    ],
)
def test_reward_weights_refuse_a_bad_value_naming_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RewardWeights(**changes)
    assert RewardWeights(accuracy=0, format=2, info=0.0).format == 2  # ints and zeros are fine


def test_reply_level_tests() -> None:
    options = ["a red car", "a dog", "a cat"]
    assert answer_is_correct("B", options, "B")
    assert answer_is_correct("Answer: (b)", options, "b")
    assert not answer_is_correct("A", options, "B")
    assert not answer_is_correct("A or B", options, "B")  # ambiguous counts as wrong
    with pytest.raises(ValueError, match="answer"):
        answer_is_correct("B", options, "D")
    queries = '<queries>["a red car on a road", "a dog"]</queries>'
    assert rollout_follows_format(queries, "B", options)
    assert not rollout_follows_format(queries, "B, because the dog barks", options)
    assert not rollout_follows_format("1. a red car\n2. a dog", "B", options)


# --- group advantages --------------------------------------------------------------------------------------


def test_group_advantages_sample_std_hand_values() -> None:
    # mean 0.5; sample variance (4 * 0.25) / (4 - 1) = 1/3; A = +-0.5 / sqrt(1/3) = +-sqrt(3)/2
    advantages = group_advantages(f64([1.0, 0.0, 0.0, 1.0]), eps=0.0)
    h = math.sqrt(3) / 2
    torch.testing.assert_close(advantages, f64([h, -h, -h, h]), rtol=1e-15, atol=0)
    # G = 2: sample std sqrt(0.5) (a population std would give +-1)
    torch.testing.assert_close(group_advantages(f64([0.0, 1.0]), eps=0.0), f64([-(0.5**0.5), 0.5**0.5]))
    # eps enters the denominator
    with_eps = group_advantages(f64([1.0, 0.0, 0.0, 1.0]), eps=1e-6)
    torch.testing.assert_close(with_eps[0], f64(0.5 / (math.sqrt(1 / 3) + 1e-6)), rtol=1e-15, atol=0)


def test_group_advantages_against_manual_computation() -> None:
    rewards = [1.55, 0.6, 1.1, 0.0, 1.5]
    mean = sum(rewards) / len(rewards)
    sample_std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    expected = [(r - mean) / (sample_std + 1e-6) for r in rewards]
    torch.testing.assert_close(group_advantages(f64(rewards)), f64(expected), rtol=1e-13, atol=1e-15)


def test_equal_rewards_give_exact_zeros() -> None:
    for eps in (0.0, 1e-6):
        assert group_advantages(f64([0.1, 0.1, 0.1]), eps=eps).tolist() == [0.0, 0.0, 0.0]  # 0.1*3/3 != 0.1
        assert group_advantages(f64([1.55] * 8), eps=eps).tolist() == [0.0] * 8


def test_group_advantages_batch_rows_are_independent_groups() -> None:
    rewards = f64([[1.0, 0.0, 0.0, 1.0], [0.6, 0.6, 0.6, 0.6], [1.55, 0.6, 1.1, 0.0]])
    batched = group_advantages(rewards)
    assert batched.shape == (3, 4)
    for row, advantages in zip(rewards, batched, strict=True):
        torch.testing.assert_close(group_advantages(row), advantages, rtol=1e-14, atol=0)  # reduction order
    assert batched[1].tolist() == [0.0] * 4
    torch.testing.assert_close(batched.mean(-1), torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)


def test_group_advantages_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="G = 1"):
        group_advantages(f64([1.0]))
    with pytest.raises(ValueError, match=r"\[G\] or \[B, G\]"):
        group_advantages(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(f64([1.0, float("nan")]))
    with pytest.raises(ValueError, match="eps"):
        group_advantages(f64([1.0, 0.0]), eps=-1.0)


def test_sampler_advantages_modes() -> None:
    rewards = f64([1.55, 0.6, 1.1, 0.0])
    assert torch.equal(sampler_advantages(rewards), rewards)  # paper: the total reward itself
    assert torch.equal(sampler_advantages(rewards, mode="group"), group_advantages(rewards))
    assert sampler_advantages(torch.tensor([1, 0])).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="mode"):
        sampler_advantages(rewards, mode="whitened")  # type: ignore[arg-type]


# --- PPO-clip loss -----------------------------------------------------------------------------------------


def ppo_case() -> dict[str, torch.Tensor]:
    """Rollout 0 (A = +2): ratios 1.5 (clipped), 0.5, 1.1, padding; rollout 1 (A = -1): 1.5, 0.5 (clipped), pad."""
    ratios = f64([[1.5, 0.5, 1.1, 1.0], [1.5, 0.5, 1.0, 1.0]])
    old = f64([[-1.0, -2.0, -0.5, -math.inf], [-0.3, -1.2, -math.inf, -math.inf]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    logprobs = torch.where(mask, old + ratios.log(), f64(math.nan))  # padding holds garbage
    return {"logprobs": logprobs.requires_grad_(), "old_logprobs": old, "advantages": f64([2.0, -1.0]), "mask": mask}


# per-token loss = -min(r A, clip(r, 0.8, 1.2) A):
#   rollout 0, A = 2:  r 1.5 -> -min(3.0, 2.4) = -2.4 (clipped); r 0.5 -> -min(1.0, 1.6) = -1.0; r 1.1 -> -2.2
#   rollout 1, A = -1: r 1.5 -> -min(-1.5, -1.2) = 1.5;  r 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped)
TOKEN_LOSSES = [[-2.4, -1.0, -2.2], [1.5, 0.8]]


def test_ppo_token_mean_hand_computed() -> None:
    case = ppo_case()
    loss, stats = ppo_clip_token_loss(**case)
    expected = sum(sum(row) for row in TOKEN_LOSSES) / 5  # -3.3 / 5
    torch.testing.assert_close(loss, f64(expected), rtol=1e-12, atol=0)
    assert stats["clip_fraction"].item() == 2 / 5
    torch.testing.assert_close(stats["ratio_mean"], f64((1.5 + 0.5 + 1.1 + 1.5 + 0.5) / 5), rtol=1e-12, atol=0)
    assert "kl_mean" not in stats
    loss.backward()
    # d loss / d logp = -r A / 5 where unclipped, 0 where the clip is active or the token is masked
    expected_grad = f64([[0.0, -0.5 * 2 / 5, -1.1 * 2 / 5, 0.0], [1.5 * 1 / 5, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(case["logprobs"].grad, expected_grad, rtol=1e-12, atol=1e-15)


def test_ppo_per_token_advantages_and_token_normaliser() -> None:
    case = ppo_case()
    per_token = case["advantages"].unsqueeze(-1).expand(2, 4)
    loss_rollout, _ = ppo_clip_token_loss(**case)
    loss_token, _ = ppo_clip_token_loss(**{**case, "advantages": per_token})
    assert torch.equal(loss_rollout, loss_token)
    loss_accumulated, _ = ppo_clip_token_loss(**case, num_tokens=10)  # e.g. 10 tokens over the micro-batches
    torch.testing.assert_close(loss_accumulated, f64(-3.3 / 10), rtol=1e-12, atol=0)


def test_ppo_masked_tokens_and_empty_rollouts_are_excluded() -> None:
    case = ppo_case()
    # a third rollout whose tokens are all masked (e.g. padding of the batch) changes nothing
    padded = {
        "logprobs": torch.cat([case["logprobs"].detach(), f64([[5.0, -9.0, math.nan, 0.0]])]).requires_grad_(),
        "old_logprobs": torch.cat([case["old_logprobs"], f64([[0.0, 3.0, 0.0, -math.inf]])]),
        "advantages": torch.cat([case["advantages"], f64([100.0])]),
        "mask": torch.cat([case["mask"], torch.zeros(1, 4, dtype=torch.bool)]),
    }
    reference, _ = ppo_clip_token_loss(**case)
    loss, stats = ppo_clip_token_loss(**padded)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-15, atol=0)
    assert stats["clip_fraction"].item() == 2 / 5
    loss.backward()
    assert torch.isfinite(padded["logprobs"].grad).all()
    assert padded["logprobs"].grad[2].tolist() == [0.0] * 4
    # nothing to learn from: zero loss, zero gradient, no NaN
    empty = {**case, "mask": torch.zeros(2, 4, dtype=torch.bool)}
    empty["logprobs"] = case["logprobs"].detach().clone().requires_grad_()
    loss, stats = ppo_clip_token_loss(**empty)
    loss.backward()
    assert loss.item() == 0.0 and stats["clip_fraction"].item() == 0.0
    assert empty["logprobs"].grad.tolist() == [[0.0] * 4] * 2


def test_ppo_kl_term_hand_computed() -> None:
    case = ppo_case()
    # ref - logp per own token: rollout 0: ln 2, 0, -ln 2; rollout 1: ln 2, ln 2
    # k3 = e^d - d - 1: ln 2 -> 1 - ln 2; 0 -> 0; -ln 2 -> ln 2 - 1/2
    shift = f64([[LN2, 0.0, -LN2, 0.0], [LN2, LN2, 0.0, 0.0]])
    ref = case["logprobs"].detach() + shift
    kl_mean = (3 * (1 - LN2) + (LN2 - 0.5)) / 5
    beta = 0.1
    loss, stats = ppo_clip_token_loss(**case, ref_logprobs=ref, kl_beta=beta)
    torch.testing.assert_close(loss, f64(-3.3 / 5 + beta * kl_mean), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["kl_mean"], f64(kl_mean), rtol=1e-12, atol=0)
    loss.backward()
    # d k3 / d logp = 1 - e^d: -1 at d = ln 2, 0 at d = 0, +1/2 at d = -ln 2; spread over 5 tokens
    kl_grad = f64([[-1.0, 0.0, 0.5, 0.0], [-1.0, -1.0, 0.0, 0.0]]) * beta / 5
    ppo_grad = f64([[0.0, -0.2, -0.44, 0.0], [0.3, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(case["logprobs"].grad, ppo_grad + kl_grad, rtol=1e-12, atol=1e-15)
    # a reference without a KL weight is reported, not added
    unweighted, stats = ppo_clip_token_loss(**ppo_case(), ref_logprobs=ref)
    torch.testing.assert_close(unweighted, f64(-3.3 / 5), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats["kl_mean"], f64(kl_mean), rtol=1e-12, atol=0)


def test_ppo_on_policy_gradient_is_reinforce() -> None:
    generator = torch.Generator().manual_seed(3)
    logprobs = (-torch.rand(3, 5, generator=generator, dtype=F64)).requires_grad_()
    mask = torch.rand(3, 5, generator=generator) > 0.3
    advantages = torch.randn(3, generator=generator, dtype=F64)
    loss, stats = ppo_clip_token_loss(logprobs, logprobs.detach(), advantages, mask)
    loss.backward()
    # ratio = 1 everywhere: no clipping, and d loss / d logp = -A / (number of own tokens)
    assert stats["clip_fraction"].item() == 0.0 and stats["ratio_mean"].item() == 1.0
    expected = torch.where(mask, -advantages.unsqueeze(-1) / mask.sum(), f64(0.0))
    torch.testing.assert_close(logprobs.grad, expected, rtol=1e-12, atol=1e-15)


def test_ppo_gradcheck() -> None:
    generator = torch.Generator().manual_seed(5)
    old = -torch.rand(3, 6, generator=generator, dtype=F64) - 0.1
    # log-ratios spread over [-0.5, 0.5] so some tokens sit on either side of the clip range (a measure-zero
    # chance of landing within gradcheck's 1e-6 step of a kink)
    logprobs = (old + torch.rand(3, 6, generator=generator, dtype=F64) - 0.5).requires_grad_()
    ref = old + 0.3 * torch.randn(3, 6, generator=generator, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.bool)
    advantages = f64([1.3, -0.7, 0.4])

    def loss_of(lp: torch.Tensor) -> torch.Tensor:
        return ppo_clip_token_loss(lp, old, advantages, mask, ref_logprobs=ref, kl_beta=0.05)[0]

    assert torch.autograd.gradcheck(loss_of, (logprobs,), eps=1e-6, atol=1e-8)


def test_ppo_rejects_bad_input() -> None:
    case = ppo_case()
    with pytest.raises(ValueError, match="ref_logprobs"):
        ppo_clip_token_loss(**case, kl_beta=0.1)
    with pytest.raises(ValueError, match="old_logprobs"):
        ppo_clip_token_loss(**{**case, "old_logprobs": torch.zeros(2, 3, dtype=F64)})
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_token_loss(**{**case, "advantages": torch.zeros(3, dtype=F64)})
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_clip_token_loss(**case, clip_eps=0.0)
    with pytest.raises(ValueError, match="num_tokens"):
        ppo_clip_token_loss(**case, num_tokens=0)


# --- sampler: REINFORCE and log-probabilities --------------------------------------------------------------


def test_reinforce_loss_value_and_gradient_by_hand() -> None:
    logits = f64([1.0, 2.0, 3.0]).log().requires_grad_()  # p = [1/6, 2/6, 3/6]
    log_prob = torch.stack(
        [
            sampler_log_prob(logits, torch.tensor([2]), "independent"),  # log(1/2)
            sampler_log_prob(logits, torch.tensor([0]), "independent"),  # log(1/6)
        ]
    )
    advantages = f64([2.0, -1.0]).requires_grad_()
    loss = reinforce_loss(log_prob, advantages)
    # -(2 log(1/2) - log(1/6)) / 2 = (2 ln 2 - ln 6) / 2 = ln(2/3) / 2
    torch.testing.assert_close(loss, f64(0.5 * math.log(2 / 3)), rtol=1e-14, atol=0)
    loss.backward()
    # d log p_i / d logits = e_i - p: -(1/2) [2 (e_2 - p) - (e_0 - p)] = -(1/2) (2 e_2 - e_0 - p) = [7/12, 1/6, -3/4]
    torch.testing.assert_close(logits.grad, f64([7 / 12, 1 / 6, -3 / 4]), rtol=1e-14, atol=1e-15)
    assert advantages.grad is None  # the advantage is a constant


def test_reinforce_gradient_equals_minus_advantage_times_score() -> None:
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(7, generator=generator, dtype=F64).requires_grad_()
    orders = [torch.tensor([3, 0, 5]), torch.tensor([6, 1, 2]), torch.tensor([0, 4, 1])]
    advantages = f64([1.5, -0.25, 10.0])
    log_prob = torch.stack([sampler_log_prob(logits, order) for order in orders])
    (grad,) = torch.autograd.grad(reinforce_loss(log_prob, advantages), logits)
    scores = [torch.autograd.grad(sampler_log_prob(logits, order), logits)[0] for order in orders]
    expected = -sum(a * s for a, s in zip(advantages, scores, strict=True)) / len(orders)
    torch.testing.assert_close(grad, expected, rtol=1e-13, atol=1e-15)


def test_sampler_log_prob_hand_values() -> None:
    logits = f64([1.0, 2.0, 3.0]).log()  # p = [1/6, 2/6, 3/6]
    order = torch.tensor([2, 0])
    # Plackett-Luce: p_2 * p_0 / (1 - p_2) = 1/2 * (1/6) / (1/2) = 1/6;  independent: 1/2 * 1/6 = 1/12
    torch.testing.assert_close(sampler_log_prob(logits, order), f64(-math.log(6)), rtol=1e-14, atol=0)
    torch.testing.assert_close(sampler_log_prob(logits, order, "independent"), f64(-math.log(12)), rtol=1e-14, atol=0)


def draw_probability(probs: list[float], order: tuple[int, ...]) -> float:
    """Brute force: each draw renormalises over the frames not drawn yet."""
    left, result = 1.0, 1.0
    for i in order:
        result *= probs[i] / left
        left -= probs[i]
    return result


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sampler_log_prob_against_brute_force(k: int) -> None:
    logits = f64([0.3, -1.2, 2.0, 0.0])
    probs = torch.softmax(logits, 0).tolist()
    total = 0.0
    for order in itertools.permutations(range(4), k):
        plackett_luce = sampler_log_prob(logits, torch.tensor(order)).exp().item()
        assert plackett_luce == pytest.approx(draw_probability(probs, order), rel=1e-12)
        independent = sampler_log_prob(logits, torch.tensor(order), "independent").exp().item()
        assert independent == pytest.approx(math.prod(probs[i] for i in order), rel=1e-12)
        total += plackett_luce
    assert total == pytest.approx(1.0, rel=1e-12)  # the ordered draws of size k are a distribution


def test_sampler_log_prob_batched_matches_rows() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 6, generator=generator, dtype=F64)
    orders = torch.tensor([[5, 0], [1, 2], [3, 4]])
    for estimator in ("plackett_luce", "independent"):
        batched = sampler_log_prob(logits, orders, estimator)
        assert batched.shape == (3,)
        for b in range(3):
            assert batched[b].item() == sampler_log_prob(logits[b], orders[b], estimator).item()


def test_sampler_log_prob_rejects_bad_draws() -> None:
    logits = f64([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="distinct"):
        sampler_log_prob(logits, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="outside"):
        sampler_log_prob(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        sampler_log_prob(logits, f64([0.0, 1.0]))
    with pytest.raises(ValueError, match="estimator"):
        sampler_log_prob(logits, torch.tensor([0]), "pairwise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both be 1-D or both 2-D"):
        sampler_log_prob(logits, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="log_prob"):
        reinforce_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="advantages"):
        reinforce_loss(torch.zeros(2), torch.zeros(3))


def test_lr_factor_warmup_then_cosine_by_hand() -> None:
    from msjoe.rl.schedule import lr_factor

    def cosine(step: int) -> float:
        return lr_factor(step, warmup_steps=3, total_steps=13, schedule="cosine", min_lr_ratio=0.1)

    assert [cosine(s) for s in range(3)] == [0.25, 0.5, 0.75]  # (s + 1) / (warmup + 1)
    assert cosine(3) == pytest.approx(1.0)
    assert cosine(8) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the 10 decay steps: cos(pi/2) = 0
    assert cosine(13) == pytest.approx(0.1) and cosine(50) == pytest.approx(0.1)
    constant = [lr_factor(s, warmup_steps=0, total_steps=5, schedule="constant", min_lr_ratio=0.1) for s in range(7)]
    assert constant == [1.0] * 7


def test_derived_seeds_are_deterministic_distinct_and_fit_manual_seed() -> None:
    seeds = {(s, r, k): derive_seed(s, r, k) for s in range(4) for r in range(4) for k in range(2)}
    assert len(set(seeds.values())) == len(seeds)  # seed 0 rank 1 does not replay seed 1 rank 0 (as seed + rank did)
    assert all(0 <= value < 2**63 for value in seeds.values())
    assert derive_seed(3, 2, 1) == seeds[(3, 2, 1)] and derive_seed(5, 0) == derive_seed(5, 0, 0)
    torch.Generator().manual_seed(max(seeds.values()))  # accepted by torch
