"""Stage-2 joint training on a tiny random Qwen2.5-VL, a tiny CLIP and a small U-Sampler over a generated video.

The random MLLM writes gibberish, so its own rewards are mostly tied; tests that need a learning signal set the
rollouts' rewards by hand and call ``update``, which is exactly what ``step`` does after its rollouts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from _stage2_helpers import OPTIONS, VIDEO_FPS, perturb_lora, small_config, with_rewards
from _torchrun import TWO_PROCESSES
from msjoe.data.schema import QAItem
from msjoe.errors import NonFiniteLossError
from msjoe.features import DualEncoder, similarity
from msjoe.index import index_video
from msjoe.mllm import GenerationConfig, ImagePart
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.pipeline import preview_indices
from msjoe.rl.losses import ppo_clip_token_loss
from msjoe.rl.rewards import RewardWeights, informative_fraction, rollout_reward
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.synthetic_video import Event, event_color, read_frame_index, write_video
from msjoe.train.config import ConfigError, run_config_from_dict
from msjoe.train.examples import TrainExample
from msjoe.train.stage2 import Rollout, Stage2Config, Stage2Trainer

# The hand-computed GRPO case: mean 0.5, sample std sqrt((0.25 + 0.25 + 0) / 2) = 0.5, so A = (1, -1, 0).
REWARDS = (1.0, 0.0, 0.5)
ADVANTAGES = (1.0, -1.0, 0.0)


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory, encoder: DualEncoder) -> TrainExample:
    """6 s at 4 fps: 6 one-second candidates at 0.5, 1.5, ... 5.5 s (frames 2, 6, ... 22); an event at 2-4 s."""
    folder = tmp_path_factory.mktemp("stage2-video")
    video = write_video(
        folder / "v.mp4", duration=6.0, fps=VIDEO_FPS, size=(128, 72), events=[Event(2.0, 4.0, event_color(0))]
    )
    features = index_video(video, encoder, None, fps=1.0)
    qa = QAItem(id="item-1", video=str(video), question="What colour is the background?", options=OPTIONS, answer="A")
    return TrainExample(qa=qa, features=features)


def make_trainer(qwen_dir: Path, encoder: DualEncoder, **overrides: object) -> Stage2Trainer:
    """A fresh trainer on freshly loaded models (the trainer adds adapters to its MLLM in place)."""
    mllm = TransformersMLLM(str(qwen_dir), dtype="float32")
    sampler = USampler(config=USamplerConfig(widths=(8, 16), query_width=4), seed=0)
    return Stage2Trainer(mllm, sampler, encoder, small_config(**overrides))


def trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def frozen(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if not p.requires_grad}


def images(messages: list) -> list[ImagePart]:
    return [part for message in messages for part in message.content if isinstance(part, ImagePart)]


# --- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"group_size": 1}, "group_size"),
        ({"k": 0}, "k"),
        ({"max_queries": 5}, "max_queries"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"clip_epsilon": 1.0}, "clip_epsilon"),
        ({"kl_beta": -0.1}, "kl_beta"),
        ({"sampler_advantage": "mean"}, "sampler_advantage"),
        ({"estimator": "exact"}, "estimator"),
        ({"finetune": "qlora"}, "finetune"),
        ({"lora_target_modules": ()}, "lora_target_modules"),
        ({"mllm_max_grad_norm": 0.0}, "mllm_max_grad_norm"),
        ({"sampler_learning_rate": 0.0}, "sampler_learning_rate"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"batch_size": True}, "batch_size"),
        ({"generation_batch_size": 0}, "generation_batch_size"),
        ({"scoring_max_tokens": 0}, "scoring_max_tokens"),
        ({"reward_weights": {"info": -0.1}}, r"reward_weights\.info must be a finite number >= 0, got -0\.1"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Stage2Config(**overrides)


def test_config_round_trips_through_a_plain_mapping() -> None:
    config = Stage2Config(reward_weights=RewardWeights(accuracy=0.8), lora_target_modules=("q_proj", "v_proj"))
    data = json.loads(json.dumps(config.to_dict()))  # YAML/JSON-ready: lists and mappings only
    assert data["reward_weights"] == {"accuracy": 0.8, "format": 0.5, "info": 0.1}
    # A saved config loads back through the run config reader, as a run's config.yaml does.
    assert run_config_from_dict({"stage": 2, "trainer": data}).trainer == config
    with pytest.raises(ConfigError, match=r"unknown key\(s\) trainer\.learning_rate"):
        run_config_from_dict({"stage": 2, "trainer": {**data, "learning_rate": 1.0}})


def test_cosine_schedule_warms_up_then_decays_to_the_floor() -> None:
    config = Stage2Config(steps=12, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    assert [config.lr_factor(s) for s in (0, 1)] == [1 / 3, 2 / 3]
    assert config.lr_factor(2) == 1.0
    assert config.lr_factor(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert config.lr_factor(12) == pytest.approx(0.1) and config.lr_factor(50) == pytest.approx(0.1)


# --- rollouts ------------------------------------------------------------------------------------------------
def test_rollouts_record_what_was_generated_drawn_shown_and_earned(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    # Low enough for random queries to count; the answer turn batched too (on a CPU it is one at a time by default).
    trainer = make_trainer(tiny_qwen_dir, encoder, info_threshold=1.0, generation_batch_size=3)
    config = trainer.config
    (group,) = trainer.rollout([example])
    assert [r.index for r in group] == [0, 1, 2] and {r.example_id for r in group} == {"item-1"}
    candidates = example.timestamps
    previews = [candidates[i] for i in preview_indices(len(candidates), config.k)]
    # The exact tokens: the group's replies come from one batched generate call per turn (seeded).
    assert len({r.query_seed for r in group}) == 1 and len({r.answer_seed for r in group}) == 1
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=group[0].query_seed)
    again = trainer.mllm.complete_batch([group[0].query_messages], sampled, samples_per_chat=3)
    assert [c.token_ids for c in again] == [r.query_token_ids for r in group]
    sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=group[0].answer_seed)
    again = trainer.mllm.complete_batch([r.answer_messages for r in group], sampled)
    assert [c.token_ids for c in again] == [r.answer_token_ids for r in group]
    # One PPO epoch, no KL term: nothing is scored while rolling out (the update's own forward gives the old
    # log-probabilities, see test_one_epoch_gradients_equal_the_two_pass_reference).
    assert all(r.query_old_logprobs is None and r.answer_old_logprobs is None for r in group)
    assert all(r.query_ref_logprobs is None and r.answer_ref_logprobs is None for r in group)
    assert all(r.query_messages is group[0].query_messages for r in group)  # one shared chat: encoded once
    for rollout in group:
        # Prompt lengths as scored (text and image tokens), from generation: they size the scoring passes.
        for messages, length in ((rollout.query_messages, rollout.query_prompt_tokens),
                                 (rollout.answer_messages, rollout.answer_prompt_tokens)):  # fmt: skip
            assert length == trainer.mllm.encode(messages)["input_ids"].shape[1]
        # The query turn saw the K/2 previews; the answer turn saw exactly the drawn frames, in time order.
        assert len(images(rollout.query_messages)) == len(previews)
        shown = [read_frame_index(image.pixels) for image in images(rollout.answer_messages)]
        assert shown == [round(t * VIDEO_FPS) for t in rollout.chosen_timestamps]
        assert rollout.chosen_indices == sorted(rollout.draw_order) and len(set(rollout.draw_order)) == config.k
        assert rollout.chosen_timestamps == [candidates[i] for i in rollout.chosen_indices]
        # The similarity is that of the parsed queries (or of the question when none parsed), and r_info counts
        # the informative ones among the MLLM's own queries.
        queries = [example.qa.question] if rollout.queries_from_question else rollout.queries
        expected_sim = similarity(encoder.encode_texts(queries), example.features.embeddings)
        torch.testing.assert_close(rollout.sim, expected_sim, rtol=0, atol=0)
        info = 0.0 if rollout.queries_from_question else float(informative_fraction(expected_sim, threshold=1.0))
        assert rollout.info_fraction == pytest.approx(info)
        # The reward is the reward function of the recorded outcomes.
        expected = rollout_reward(
            rollout.correct, rollout.queries_well_formed, rollout.answer_well_formed, rollout.info_fraction
        )
        assert rollout.reward == pytest.approx(float(expected.total))
        assert rollout.reward == pytest.approx(rollout.reward_accuracy + rollout.reward_format + rollout.reward_info)
        assert rollout.correct == (rollout.answer_letter == "A")
        assert 0 < rollout.sampler_entropy <= math.log(len(candidates)) + 1e-6
        json.dumps(rollout.to_dict())  # loggable as is
    assert any(r.info_fraction > 0 for r in group)
    assert len({tuple(r.query_token_ids) for r in group}) == 3  # the group explores


@pytest.mark.parametrize("batch_size", [1, None])
def test_rollouts_generated_one_at_a_time_get_their_own_seeds(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample, batch_size: int | None
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, generation_batch_size=batch_size)
    (group,) = trainer.rollout([example])
    # None on a CPU: the query turn (one prompt, sampled G times) is batched, the answer turns are not.
    assert len({r.query_seed for r in group}) == (3 if batch_size == 1 else 1)
    assert len({r.answer_seed for r in group}) == 3
    for rollout in group:
        sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=rollout.answer_seed)
        assert trainer.mllm.complete(rollout.answer_messages, sampled).token_ids == rollout.answer_token_ids


# --- the update ----------------------------------------------------------------------------------------------
def test_an_update_trains_lora_and_sampler_only_and_reports_the_rollouts(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder)
    policy, sampler = trainer.policy_model, trainer.sampler.module
    assert all("lora_" in name for name in trainable(policy))
    assert not any("visual" in name for name in trainable(policy))  # no adapter on the vision tower
    base_before, lora_before, sampler_before = frozen(policy), trainable(policy), trainable(sampler)
    groups = with_rewards(trainer.rollout([example]), REWARDS)

    stats = trainer.update(groups)

    assert all(torch.equal(base_before[name], p) for name, p in frozen(policy).items())
    lora_after = trainable(policy)
    changed = [name for name in lora_after if not torch.equal(lora_before[name], lora_after[name])]
    assert changed and all("lora_B" in name for name in changed)  # B = 0 at start: only B gets a gradient
    assert any(not torch.equal(sampler_before[name], p) for name, p in trainable(sampler).items())
    assert trainer.step_count == 1 and trainer.sampler.training_steps == 1
    rollouts = groups[0]
    assert stats.step == 1 and stats.num_rollouts == 3
    assert stats.reward == pytest.approx(sum(REWARDS) / 3)
    assert stats.advantage_abs_mean == pytest.approx(2 / 3, rel=1e-5) and stats.tied_group_rate == 0.0
    assert stats.sampler_advantage_mean == pytest.approx(0.5)  # "raw": the reward itself
    assert stats.accuracy == pytest.approx(sum(r.correct for r in rollouts) / 3)
    assert stats.query_tokens == pytest.approx(sum(len(r.query_token_ids) for r in rollouts) / 3)
    assert stats.frame_positions == tuple((i + 0.5) / 6 for r in rollouts for i in r.chosen_indices)
    assert stats.clip_fraction == 0.0 and stats.kl is None
    assert math.isfinite(stats.mllm_grad_norm) and stats.mllm_grad_norm > 0
    json.dumps(stats.to_dict())


def test_first_epoch_gradients_equal_the_hand_computed_reinforce_gradients(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, sampler_advantage="raw", estimator="plackett_luce")
    perturb_lora(trainer)
    groups = with_rewards(trainer.rollout([example]), REWARDS)
    rollouts = groups[0]
    assert trainer.mllm_advantages(groups) == pytest.approx(ADVANTAGES, abs=1e-5)
    policy, sampler = trainer.policy_model, trainer.sampler

    trainer.mllm_optimizer.zero_grad(set_to_none=True)
    trainer.mllm_backward(groups)
    got = {name: p.grad.clone() for name, p in policy.named_parameters() if p.requires_grad}
    # With ratio 1 the PPO-clip gradient is -1/N * sum_i A_i * sum_t grad log pi(token t of rollout i), N = all
    # tokens of both turns of every rollout (token mean).
    policy.zero_grad(set_to_none=True)
    total_tokens = sum(r.num_tokens for r in rollouts)
    surrogate = torch.zeros(())
    for rollout, advantage in zip(rollouts, ADVANTAGES, strict=True):
        for messages, ids in ((rollout.query_messages, rollout.query_token_ids),
                              (rollout.answer_messages, rollout.answer_token_ids)):  # fmt: skip
            surrogate = surrogate + advantage * trainer.mllm.token_logprobs(messages, ids, 1.0, model=policy).sum()
    (-surrogate / total_tokens).backward()
    assert {name for name, grad in got.items() if grad.abs().sum() > 0} >= {
        name for name, _ in policy.named_parameters() if "lora_A" in name
    }
    for name, parameter in policy.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(got[name], parameter.grad, rtol=1e-4, atol=1e-7)

    # The sampler: -1/G * sum_i r_i * log P(draw_i), log P recomputed one rollout at a time (exact Plackett-Luce).
    trainer.sampler_optimizer.zero_grad(set_to_none=True)
    trainer.sampler_backward(groups)
    got = {name: p.grad.clone() for name, p in sampler.module.named_parameters()}
    sampler.module.zero_grad(set_to_none=True)
    reference = sum(
        -reward * sampler.log_prob(r.sim, torch.tensor(r.draw_order))
        for r, reward in zip(rollouts, REWARDS, strict=True)
    )
    (reference / 3).backward()
    for name, parameter in sampler.module.named_parameters():
        torch.testing.assert_close(got[name], parameter.grad, rtol=1e-4, atol=1e-7)


def test_batched_scoring_equals_one_completion_at_a_time_and_sees_shared_frames_once(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder)
    perturb_lora(trainer)  # the adapter matters: the shared image features must come from the adapted model
    (group,) = trainer.rollout([example])
    policy, mllm = trainer.policy_model, trainer.mllm
    # The group's query turns share one chat (one list object); the answer chats differ (their own frames, and
    # prompts of different lengths when the timestamps' digits differ). One batch mixes both.
    chats = [r.query_messages for r in group] + [r.answer_messages for r in group]
    completions = [r.query_token_ids for r in group] + [r.answer_token_ids for r in group]
    vision_calls = []
    hook = mllm.model.model.visual.register_forward_hook(lambda *_: vision_calls.append(1))
    try:
        with torch.no_grad():
            one_at_a_time = [
                mllm.token_logprobs(chat, ids, 0.7, model=policy) for chat, ids in zip(chats, completions, strict=True)
            ]
            separate_calls = len(vision_calls)
            batched = mllm.token_logprobs_batch(chats, completions, 0.7, model=policy)
    finally:
        hook.remove()
    assert separate_calls == 6 and len(vision_calls) == 7  # batched: one vision pass over the 4 distinct chats
    for expected, got in zip(one_at_a_time, batched, strict=True):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one chat per completion"):
        mllm.token_logprobs_batch(chats[:2], completions[:3])
    assert mllm.token_logprobs_batch([], []) == []


def test_scoring_passes_hold_one_turn_of_one_group_within_the_token_budget(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder)
    groups = trainer.rollout([example, example])
    rollouts = [r for group in groups for r in group]
    advantages = [1.0, -1.0, 0.0, 0.5, 0.0, -0.5]
    lengths = {(id(r), turn): getattr(r, f"{turn}_prompt_tokens") + len(getattr(r, f"{turn}_token_ids"))
               for r in rollouts for turn in ("query", "answer")}  # fmt: skip
    longest = max(lengths.values())
    middle = sorted(lengths.values())[len(lengths) // 2]
    # Budgets: the default (the longest turn), two middling rows, below any row, whole groups; with and without the
    # KL term (without it, rollouts with zero advantage are not scored).
    for budget, kl_beta in ((None, 0.0), (None, 0.1), (2 * middle, 0.1), (1, 0.1), (10**6, 0.0)):
        trainer.config.scoring_max_tokens, trainer.config.kl_beta = budget, kl_beta
        limit = budget or longest
        passes = trainer._scoring_batches(groups, advantages)
        scored = [i for i, advantage in enumerate(advantages) if advantage != 0 or kl_beta > 0]
        for turn in ("query", "answer"):  # every scored rollout once per turn, in order, the advantages alongside
            mine = [batch for batch in passes if batch.turn == turn]
            assert [rollouts.index(r) for batch in mine for r in batch.rollouts] == scored
            assert [a for batch in mine for a in batch.advantages] == [advantages[i] for i in scored]
        order = []  # (group, turn) of each pass: one group a pass, group by group, queries first
        for batch in passes:
            (group_index,) = {i for i, group in enumerate(groups) for r in batch.rollouts if r in group}
            order.append((group_index, batch.turn == "answer"))
            rows = [lengths[id(r), batch.turn] for r in batch.rollouts]
            assert len(rows) == 1 or len(rows) * max(rows) <= limit  # the padded size of the pass
        assert order == sorted(order)
        for index in range(len(passes) - 1):  # greedy: a pass ends only where the next row would not fit
            if order[index] == order[index + 1]:
                rows = [
                    lengths[id(r), passes[index].turn] for r in [*passes[index].rollouts, passes[index + 1].rollouts[0]]
                ]
                assert len(rows) * max(rows) > limit
        if budget == 1:
            assert len(passes) == 12  # every turn alone
        if budget == 10**6:
            assert len(passes) == 4  # a whole group per turn


@pytest.mark.parametrize(("kl_beta", "scoring_max_tokens"), [(0.0, 10**6), (0.1, 1)])
def test_one_epoch_gradients_equal_the_two_pass_reference(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample, kl_beta: float, scoring_max_tokens: int | None
) -> None:
    """One PPO epoch takes the old log-probabilities from the gradient pass itself (ratio 1). The reference is the
    former two-pass method, one rollout and turn at a time: a no-grad pass for the old log-probabilities, then the
    PPO-clip loss of a gradient pass against them, every token of the step in the denominator. A tied group is
    skipped without a KL term but still counts in the token mean."""
    trainer = make_trainer(tiny_qwen_dir, encoder, kl_beta=kl_beta, scoring_max_tokens=scoring_max_tokens)
    perturb_lora(trainer)
    first, second = trainer.rollout([example, example])
    groups = with_rewards([first], REWARDS) + with_rewards([second], (0.6, 0.6, 0.6))
    rollouts = [rollout for group in groups for rollout in group]
    turns = [
        (rollout, turn, advantage)
        for rollout, advantage in zip(rollouts, trainer.mllm_advantages(groups), strict=True)
        for turn in ("query", "answer")
    ]

    def of(rollout: Rollout, turn: str, what: str) -> object:
        return getattr(rollout, f"{turn}_{what}")

    policy, mllm = trainer.policy_model, trainer.mllm
    total_tokens = sum(r.num_tokens for r in rollouts)
    with torch.no_grad():  # pass 1: the old log-probabilities (and, with a KL term, the base model's)
        olds = [
            mllm.token_logprobs(of(r, t, "messages"), of(r, t, "token_ids"), 1.0, model=policy) for r, t, _ in turns
        ]
        if kl_beta > 0:
            with policy.disable_adapter():
                for r, t, _ in turns:
                    base = mllm.token_logprobs(of(r, t, "messages"), of(r, t, "token_ids"), 1.0, model=policy)
                    torch.testing.assert_close(of(r, t, "ref_logprobs"), base, rtol=0, atol=1e-5)
    reference_loss = torch.zeros(())
    policy.train()
    for old, (r, t, advantage) in zip(olds, turns, strict=True):  # pass 2
        logprobs = mllm.token_logprobs(of(r, t, "messages"), of(r, t, "token_ids"), 1.0, model=policy)
        loss, _ = ppo_clip_token_loss(
            logprobs[None], old[None], torch.tensor([advantage]), torch.ones(1, len(logprobs), dtype=torch.bool),
            ref_logprobs=of(r, t, "ref_logprobs")[None] if kl_beta > 0 else None, kl_beta=kl_beta,
            num_tokens=total_tokens,
        )  # fmt: skip
        reference_loss = reference_loss + loss
    policy.zero_grad(set_to_none=True)
    reference_loss.backward()
    expected = {name: p.grad.clone() for name, p in policy.named_parameters() if p.requires_grad}
    assert any(gradient.abs().sum() > 0 for name, gradient in expected.items() if "lora_A" in name)

    policy.zero_grad(set_to_none=True)
    stats = trainer.mllm_backward(groups)

    assert stats["loss"] == pytest.approx(float(reference_loss.detach()), rel=1e-4, abs=1e-7)
    assert (stats["kl"] is None) == (kl_beta == 0)
    for name, parameter in policy.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-4, atol=1e-7)
    # The pass's log-probabilities are recorded as the rollouts' old ones (for logs and a NaN dump); rollouts with
    # zero advantage (the tied group, the third of the first) are not scored without a KL term.
    for old, (r, t, advantage) in zip(olds, turns, strict=True):
        if kl_beta == 0 and advantage == 0:
            assert of(r, t, "old_logprobs") is None
        else:
            torch.testing.assert_close(of(r, t, "old_logprobs"), old, rtol=0, atol=1e-5)


def test_a_group_of_equal_rewards_leaves_the_mllm_alone_except_for_weight_decay(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, mllm_weight_decay=0.1, mllm_learning_rate=0.01)
    perturb_lora(trainer)
    groups = with_rewards(trainer.rollout([example]), (0.6, 0.6, 0.6))
    assert trainer.mllm_advantages(groups) == [0.0, 0.0, 0.0]
    before, sampler_before = trainable(trainer.policy_model), trainable(trainer.sampler.module)

    stats = trainer.update(groups)

    # AdamW with a zero gradient moves nothing but decays: p <- p * (1 - lr * weight_decay).
    for name, parameter in trainable(trainer.policy_model).items():
        torch.testing.assert_close(parameter, before[name] * (1 - 0.01 * 0.1), rtol=1e-6, atol=0)
    assert stats.tied_group_rate == 1.0 and stats.advantage_abs_mean == 0.0 and stats.mllm_grad_norm == 0.0
    # The sampler's "raw" advantage is the reward itself (paper): it still learns from a tied group.
    assert any(not torch.equal(sampler_before[n], p) for n, p in trainable(trainer.sampler.module).items())


def test_several_ppo_epochs_step_the_mllm_each_epoch_and_clip_off_policy_tokens(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, ppo_epochs=3, clip_epsilon=0.01, mllm_learning_rate=0.05)
    groups = with_rewards(trainer.rollout([example]), REWARDS)
    with torch.no_grad():  # the policy that generated
        generating = [trainer.mllm.token_logprobs(r.answer_messages, r.answer_token_ids, 1.0) for r in groups[0]]
    stats = trainer.update(groups)
    # The old log-probabilities come from a no-grad pass before the first epoch (the generating policy), not from
    # a later epoch: the rollout with zero advantage is not scored.
    torch.testing.assert_close(groups[0][0].answer_old_logprobs, generating[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(groups[0][1].answer_old_logprobs, generating[1], rtol=0, atol=1e-5)
    assert groups[0][2].answer_old_logprobs is None and groups[0][2].query_old_logprobs is None
    assert {int(state["step"]) for state in trainer.mllm_optimizer.state.values()} == {3}
    assert {int(state["step"]) for state in trainer.sampler_optimizer.state.values()} == {1}  # REINFORCE: once
    # After the first epoch the policy has moved: later epochs see ratios outside 1 +- 0.01 and clip them.
    assert 0 < stats.clip_fraction < 1
    assert trainer.step_count == 1


def test_the_same_seed_reproduces_rollouts_and_parameters(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    runs = []
    for seed in (3, 3, 4):
        trainer = make_trainer(tiny_qwen_dir, encoder, seed=seed)
        groups = with_rewards(trainer.rollout([example]), REWARDS)
        trainer.update(groups)
        stats = trainer.step([example])  # a whole step on the model's own rewards
        trace = [(r.query_token_ids, r.answer_token_ids, r.draw_order) for r in groups[0]]
        runs.append((trace, trainable(trainer.policy_model), trainable(trainer.sampler.module), stats))
    (trace_a, lora_a, sampler_a, stats_a), (trace_b, lora_b, sampler_b, stats_b), (trace_c, *_) = runs
    assert trace_a == trace_b and trace_a != trace_c
    assert all(torch.equal(lora_a[name], lora_b[name]) for name in lora_a)
    assert all(torch.equal(sampler_a[name], sampler_b[name]) for name in sampler_a)
    timing = ("rollout_seconds", "update_seconds", "seconds")
    assert {k: v for k, v in stats_a.to_dict().items() if k not in timing} == {
        k: v for k, v in stats_b.to_dict().items() if k not in timing
    }


def test_state_dict_round_trip_restores_step_generators_and_schedules(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample, tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, warmup_steps=3)
    torch.save(trainer.state_dict(), tmp_path / "state.pt")  # a plain, torch.save-able mapping
    first = trainer.rollout([example])
    trainer.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    again = trainer.rollout([example])  # the generators are back where they were: the same rollouts
    assert [(r.query_token_ids, r.answer_token_ids, r.draw_order) for r in again[0]] == [
        (r.query_token_ids, r.answer_token_ids, r.draw_order) for r in first[0]
    ]
    assert [r.query_seed for r in trainer.rollout([example])[0]] != [r.query_seed for r in first[0]]

    trainer.update(with_rewards(first, REWARDS))
    assert trainer.step_count == 1 and trainer.mllm_scheduler.get_last_lr()[0] == pytest.approx(1e-5 * 2 / 4)
    trainer.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert trainer.step_count == 0
    assert trainer.mllm_scheduler.get_last_lr()[0] == pytest.approx(1e-5 / 4)
    assert trainer.sampler_scheduler.get_last_lr()[0] == pytest.approx(1e-4 / 4)


def test_a_non_finite_loss_raises_with_the_rollouts_and_steps_nothing(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder)
    groups = with_rewards(trainer.rollout([example]), REWARDS)
    poisoned = torch.zeros(len(groups[0][0].query_token_ids))
    poisoned[0] = float("nan")
    groups[0][0].query_old_logprobs = poisoned  # a poisoned rollout (recorded values are used as given): NaN ratio
    lora_before, sampler_before = trainable(trainer.policy_model), trainable(trainer.sampler.module)

    with pytest.raises(NonFiniteLossError, match="mllm_loss nan") as raised:
        trainer.update(groups)

    assert raised.value.step == 1
    recorded = raised.value.batch["rollouts"]
    assert [r["query_token_ids"] for r in recorded[0]] == [r.query_token_ids for r in groups[0]]
    assert all(torch.equal(lora_before[n], p) for n, p in trainable(trainer.policy_model).items())
    assert all(torch.equal(sampler_before[n], p) for n, p in trainable(trainer.sampler.module).items())
    assert not trainer.mllm_optimizer.state and not trainer.sampler_optimizer.state  # never stepped
    assert all(p.grad is None for p in trainer.policy_model.parameters())
    assert trainer.step_count == 0 and trainer.mllm_scheduler.last_epoch == 0


def test_activation_checkpointing_gives_the_same_gradients(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    plain = make_trainer(tiny_qwen_dir, encoder)
    checkpointed = make_trainer(tiny_qwen_dir, encoder, gradient_checkpointing=True)
    assert checkpointed.policy_model.get_base_model().is_activation_checkpointing
    groups = with_rewards(plain.rollout([example]), REWARDS)  # rollouts are plain data: any trainer can learn from them
    gradients = []
    for trainer in (plain, checkpointed):
        perturb_lora(trainer)
        trainer.mllm_backward(groups)
        gradients.append({n: p.grad for n, p in trainer.policy_model.named_parameters() if p.requires_grad})
    assert all(gradients[1][name].abs().sum() > 0 for name in gradients[1] if "lora_A" in name)
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-5, atol=1e-8)


# --- reference model and full fine-tuning --------------------------------------------------------------------
def test_kl_reference_of_lora_is_the_base_model(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, kl_beta=0.5)
    perturb_lora(trainer)  # the policy now differs from the base model
    groups = with_rewards(trainer.rollout([example]), REWARDS)
    base = TransformersMLLM(str(tiny_qwen_dir), dtype="float32")
    for rollout in groups[0]:
        with torch.no_grad():
            expected = base.token_logprobs(rollout.answer_messages, rollout.answer_token_ids, 1.0)
            policy = trainer.mllm.token_logprobs(rollout.answer_messages, rollout.answer_token_ids, 1.0)
        torch.testing.assert_close(rollout.answer_ref_logprobs, expected, rtol=0, atol=1e-5)
        assert not torch.allclose(rollout.answer_ref_logprobs, policy)
    stats = trainer.update(groups)
    assert stats.kl is not None and stats.kl > 0


def test_full_finetuning_trains_the_language_model_not_the_vision_tower(
    tiny_qwen_dir: Path, encoder: DualEncoder, example: TrainExample
) -> None:
    trainer = make_trainer(tiny_qwen_dir, encoder, finetune="full", kl_beta=0.1, mllm_learning_rate=1e-3)
    model = trainer.policy_model
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and not any(".visual." in f".{name}" for name in names)
    assert any("language_model" in name for name in names) and "lm_head.weight" in names
    vision_before, language_before = frozen(model), trainable(model)
    groups = with_rewards(trainer.rollout([example]), REWARDS)
    for rollout in groups[0]:  # the reference is the starting model (up to the rounding of batched scoring)
        with torch.no_grad():
            expected = trainer.mllm.token_logprobs(rollout.query_messages, rollout.query_token_ids, 1.0)
        torch.testing.assert_close(rollout.query_ref_logprobs, expected, rtol=0, atol=1e-6)

    stats = trainer.update(groups)

    assert all(torch.equal(vision_before[name], p) for name, p in frozen(model).items())
    assert any(not torch.equal(language_before[name], p) for name, p in trainable(model).items())
    reference = dict(trainer.reference_model.named_parameters())
    assert all(torch.equal(reference[name], language_before[name]) for name in language_before)
    assert stats.kl == pytest.approx(0.0, abs=1e-9)  # measured before the update: policy == reference


# --- two processes -------------------------------------------------------------------------------------------
def test_two_processes_train_on_the_global_token_mean_and_stay_identical(
    tiny_qwen_dir: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    """DDP on two CPU processes (gloo), each with its own item: the synchronised gradients equal the single-process
    reference over both processes' rollouts (global token mean for the MLLM, mean over rollouts for the sampler),
    and after two updates both processes hold the same weights and report the same statistics. Then two PPO epochs
    without a KL term where only rank 0's group is tied: the processes score different numbers of turns (rank 0 only
    its synchronising one) and still step alike."""
    command = [*TWO_PROCESSES, str(Path(__file__).with_name("_two_process_stage2.py"))]
    command += [str(tiny_qwen_dir), str(tiny_clip_dir), str(tmp_path)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["mllm_gradient_error"] < 1e-4 and report["sampler_gradient_error"] < 1e-4
        assert report["gradient_norm"] > 0
    assert reports[0]["weights"] == reports[1]["weights"]
    assert reports[0]["stats"] == reports[1]["stats"] and reports[0]["stats"]["num_rollouts"] == 6
    assert reports[0]["stats"]["kl"] is not None  # the reference (adapter disabled) was scored on both processes
    assert reports[0]["epochs"] == reports[1]["epochs"] and reports[0]["epochs"]["stats"]["tied_group_rate"] == 0.5
    assert reports[0]["epochs"]["weights"] != reports[0]["weights"]


@pytest.mark.parametrize("generation_batch_size", [None, 3])  # answer turns one at a time (CPU default) / batched
def test_a_step_preprocesses_each_chat_once_and_updates_as_without_reuse(
    tiny_qwen_dir: Path,
    encoder: DualEncoder,
    example: TrainExample,
    monkeypatch: pytest.MonkeyPatch,
    generation_batch_size: int | None,
) -> None:
    # Two PPO epochs and a KL term: the old, reference and update passes all score the chats of the rollouts.
    settings = {"ppo_epochs": 2, "kl_beta": 0.1, "generation_batch_size": generation_batch_size}
    reused, fresh = make_trainer(tiny_qwen_dir, encoder, **settings), make_trainer(tiny_qwen_dir, encoder, **settings)
    for trainer in (reused, fresh):
        perturb_lora(trainer)
    rendered: list[int] = []
    real_render = reused.mllm._render

    def counting_render(messages: list) -> object:
        rendered.append(id(messages))
        return real_render(messages)

    monkeypatch.setattr(reused.mllm, "_render", counting_render)
    stats = reused.step([example])
    # One query chat shared by the group (generated in one call) and one answer chat per rollout: 1 + G renders.
    assert len(rendered) == len(set(rendered)) == 1 + reused.config.group_size
    assert reused.mllm._encodings is None  # nothing kept after the step

    groups = fresh.rollout([example])  # the same seeds: the same rollouts, preprocessed anew for every pass
    expected = fresh.update(groups)
    assert stats.mllm_loss == pytest.approx(expected.mllm_loss, rel=1e-6, abs=1e-9)
    assert stats.sampler_loss == pytest.approx(expected.sampler_loss, rel=1e-6, abs=1e-9)
    for name, value in trainable(fresh.policy_model).items():
        torch.testing.assert_close(trainable(reused.policy_model)[name], value)
