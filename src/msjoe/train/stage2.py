"""Stage 2 of MSJoE: joint evolution of the MLLM (GRPO) and the U-Sampler (REINFORCE) on shared rollouts.

The G rollouts of each item are made by :mod:`msjoe.train.stage2_rollout`, with the hyper-parameters of
:mod:`msjoe.train.stage2_config`; this module updates both models from the same rollouts:

- MLLM (paper: GRPO): ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within the group, and the PPO-clip surrogate over
  the MLLM's *own* tokens in both turns (the query reply and the answer reply), one token-mean over all tokens of
  the step (:func:`~msjoe.rl.losses.ppo_clip_token_loss`), optionally plus ``kl_beta`` times the k3 KL to the
  reference model (the base model: the LoRA adapter disabled, or a frozen copy for full fine-tuning).
- U-Sampler (paper: REINFORCE): ``-A · log P(draw)`` with ``A`` the total reward (``"raw"``, paper) or the group-
  normalised reward (``"group"``), ``log P`` the exact Plackett–Luce log-probability or the paper's sum.

Separate optimisers, learning rates and gradient clips. Rollouts record the exact generated token ids, so the PPO
ratio is exact. With one PPO epoch (the default) the old log-probabilities are the update's own, detached
(``old = new.detach()``, as TRL does): the ratio is exactly 1 at the gradient, the update is REINFORCE's
``-A ∇log π`` averaged over tokens, and no separate scoring pass runs. With several epochs a no-grad pass at the
start of the update scores the policy as it generated (eval mode), then every epoch steps against those values.

Scoring is batched: each forward pass takes one turn of rollouts of one group, as many as fit in
``scoring_max_tokens`` positions (by default the longest turn scored: no pass needs more memory than one turn at a
time did). The query turn's rows share one prompt, rendered once and with its preview frames through the vision
tower once (:meth:`~msjoe.mllm.transformers_backend.TransformersMLLM.token_logprobs_batch`); answer turns are long
(K frames) and by default go one a pass, or as a right-padded batch of their own frames with a larger budget.
Results equal one pass per rollout and turn up to float rounding.

Distribution (``accelerate``, DDP or one device; :mod:`msjoe.train.run` refuses FSDP, DeepSpeed and Megatron, since
generation runs on the unwrapped model): each process runs its own items; the trainer prepares the U-Sampler
network and the policy model (in that order: peft models last, see msjoe.train.checkpoint) and both optimisers.
DDP sees exactly one synchronised forward/backward per model and optimiser step: every MLLM forward pass (one turn
of one group) is backpropagated on its own inside ``accelerator.no_sync`` except the very last one (which also
bounds memory: one batch's graph at a time), and the U-Sampler scores all rollouts in one batched forward. Only
those gradient passes run through the prepared module. Generation and the no-grad scoring passes (reference and old
log-probabilities) run on the unwrapped model: a DDP forward is a collective (buffer broadcast) and their number
differs between processes (a process whose groups are all tied scores nothing). All scoring runs under the
accelerator's autocast, as the prepared module's forward does. The token-mean denominator is the token count of the
whole step over all processes, so the averaged gradient is exactly the global token mean.

The choices beyond the paper, and why: docs/decisions.md ("Training runs").
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from msjoe.errors import NonFiniteLossError
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.mllm.base import Message
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.rl.advantages import group_advantages, sampler_advantages
from msjoe.rl.losses import ppo_clip_token_loss, reinforce_loss
from msjoe.rl.seeding import derive_seed
from msjoe.samplers.usampler import USampler
from msjoe.train.examples import TrainExample
from msjoe.train.stage2_config import LORA_TARGET_MODULES, Stage2Config
from msjoe.train.stage2_rollout import Rollout, RolloutContext, Turn, rollout_group
from msjoe.train.trainer_base import TrainerBase

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "LORA_TARGET_MODULES",
    "Rollout",
    "Stage2Config",
    "Stage2StepStats",
    "Stage2Trainer",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage2StepStats:
    """What one stage-2 step saw, over all processes (plain floats; per-rollout means unless said otherwise)."""

    step: int
    """The step number after this update (1 for the first)."""
    num_rollouts: int
    mllm_loss: float
    """The PPO-clip loss of the first epoch (token-mean, KL term included). At ratio 1 its value is
    ``-sum_i A_i n_i / N`` (n_i tokens of rollout i): a by-product of the advantages, not a measure of progress."""
    sampler_loss: float
    reward: float
    reward_std: float
    """Standard deviation of rewards over all rollouts of the step."""
    reward_accuracy: float
    """Mean weighted r_acc."""
    reward_format: float
    reward_info: float
    accuracy: float
    """Fraction of rollouts answered correctly."""
    format_rate: float
    """Fraction of rollouts whose two turns both follow the format."""
    query_format_rate: float
    answer_format_rate: float
    info_rate: float
    """Mean fraction of informative queries."""
    question_fallback_rate: float
    """Fraction of rollouts whose query reply parsed to nothing (searched with the question)."""
    advantage_abs_mean: float
    """Mean |A| of the GRPO advantages (their mean is 0 within each group)."""
    tied_group_rate: float
    """Fraction of groups whose rewards were all equal: zero advantage, no MLLM signal."""
    sampler_advantage_mean: float
    sampler_advantage_std: float
    sampler_entropy: float
    """Mean entropy (nats) of the sampler's distribution."""
    sampler_entropy_ratio: float
    """Mean entropy divided by ``log T`` (1 = uniform over the candidates)."""
    kl: float | None
    """Mean k3 KL to the reference over the MLLM's tokens (first epoch; None without a reference)."""
    clip_fraction: float
    """Fraction of tokens whose gradient the PPO clip removed (over all epochs; 0 with one epoch)."""
    query_tokens: float
    """Mean generated tokens of the query turn."""
    answer_tokens: float
    mllm_grad_norm: float
    """Gradient norm before clipping (the last epoch's)."""
    sampler_grad_norm: float
    mllm_learning_rate: float
    """Learning rate of the next update."""
    sampler_learning_rate: float
    frame_positions: tuple[float, ...] = field(repr=False)
    """Every chosen frame's position as a fraction of its video's candidates (for a histogram)."""
    rollout_seconds: float
    update_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frame_positions"] = list(self.frame_positions)
        return data


# --------------------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------------------
class Stage2Trainer(TrainerBase):
    """GRPO for the MLLM and REINFORCE for the U-Sampler on shared joint rollouts.

    ``trainer.step(examples)`` runs ``group_size`` rollouts per example and updates both models; the pieces are
    public for callers that want them apart: :meth:`rollout` (no update), :meth:`update` (from given rollouts),
    :meth:`mllm_backward` / :meth:`sampler_backward` (gradients only, no optimiser step).

    The trainer takes ownership of ``mllm``: with ``finetune="lora"`` it injects ``peft`` adapters into
    ``mllm.model`` in place (generation through ``mllm`` then uses them), with ``"full"`` it unfreezes the language
    model. Attributes the runner saves: :attr:`policy_model` (the trainable model: a ``peft.PeftModel`` or the
    transformers model, unwrapped), :attr:`sampler` (``sampler.module``), :attr:`mllm_optimizer`,
    :attr:`sampler_optimizer`; :meth:`state_dict` holds the rest (step, generators, the two lr schedulers).
    :attr:`policy_model_wrapped` and :attr:`sampler_model_wrapped` are what ``accelerator.prepare`` returned (the
    same modules without an accelerator); :attr:`reference_model` is the frozen copy of full fine-tuning with a KL
    term (None otherwise).

    Args:
        mllm: the policy, a local transformers MLLM (fp32 or bf16 weights) on the training device.
        sampler: the U-Sampler to train (typically stage 1's), on the training device.
        encoder: the frozen dual encoder whose image tower made the examples' frame embeddings.
        config: hyper-parameters; :class:`Stage2Config` defaults when None.
        accelerator: an ``accelerate.Accelerator`` (DDP or one device) or None for a plain single process. Its
            ``gradient_accumulation_steps`` must be 1 (the trainer accumulates over rollouts itself).
        frame_store: where preview and key frames are read from when stored (else decoded from the videos).
    """

    def __init__(
        self,
        mllm: TransformersMLLM,
        sampler: USampler,
        encoder: DualEncoder,
        config: Stage2Config | None = None,
        *,
        accelerator: Accelerator | None = None,
        frame_store: FrameStore | None = None,
    ) -> None:
        if not isinstance(mllm, TransformersMLLM):
            raise TypeError(f"mllm must be a TransformersMLLM (a local model that can be trained), got {mllm!r}")
        self.config = config = config or Stage2Config()
        self.mllm = mllm
        self.sampler = sampler
        self.encoder = encoder
        self.frame_store = frame_store
        self.accelerator = accelerator
        rank = 0
        if accelerator is not None:
            if accelerator.gradient_accumulation_steps != 1:
                raise ValueError(
                    "the accelerator's gradient_accumulation_steps must be 1: stage 2 accumulates over rollouts "
                    f"itself (got {accelerator.gradient_accumulation_steps}); raise batch_size instead"
                )
            if sampler.device != accelerator.device:
                raise ValueError(
                    f"the U-Sampler is on {sampler.device} but the accelerator on {accelerator.device}: build it "
                    "with device=accelerator.device"
                )
            rank = accelerator.process_index

        self.policy_model: torch.nn.Module = self._make_trainable(mllm.model, config)
        self.reference_model: torch.nn.Module | None = None
        if config.kl_beta > 0 and config.finetune == "full":
            # The starting weights, frozen; copied before accelerate wraps anything.
            self.reference_model = copy.deepcopy(mllm.model).eval().requires_grad_(False)
        mllm_parameters = [p for p in self.policy_model.parameters() if p.requires_grad]
        self.mllm_optimizer = torch.optim.AdamW(
            mllm_parameters, lr=config.mllm_learning_rate, weight_decay=config.mllm_weight_decay
        )
        self.sampler_optimizer = torch.optim.AdamW(
            sampler.module.parameters(), lr=config.sampler_learning_rate, weight_decay=config.sampler_weight_decay
        )
        # Not prepared by accelerate: its scheduler wrapper steps num_processes times per update (schedules here
        # count optimiser steps). Their states are part of state_dict().
        self.mllm_scheduler = torch.optim.lr_scheduler.LambdaLR(self.mllm_optimizer, config.lr_factor)
        self.sampler_scheduler = torch.optim.lr_scheduler.LambdaLR(self.sampler_optimizer, config.lr_factor)
        # The modules that run training forwards: the networks themselves, or their DDP wrappers.
        self.policy_model_wrapped: torch.nn.Module = self.policy_model
        self.sampler_model_wrapped: torch.nn.Module = sampler.module
        if accelerator is not None:
            # peft models last: msjoe.train.checkpoint saves models by position and treats peft ones specially.
            (
                self.sampler_model_wrapped,
                self.policy_model_wrapped,
                self.sampler_optimizer,
                self.mllm_optimizer,
            ) = accelerator.prepare(sampler.module, self.policy_model, self.sampler_optimizer, self.mllm_optimizer)
            if self.reference_model is not None:
                self.reference_model.to(accelerator.device)

        # The trainer's own random streams, different on every process and independent of the global RNG:
        # generation seeds (CPU) and the sampler's Gumbel noise (on the sampler's device).
        self.generator = torch.Generator().manual_seed(derive_seed(config.seed, rank, 0))
        self.draw_generator = torch.Generator(device=sampler.device).manual_seed(derive_seed(config.seed, rank, 1))
        self.step_count = 0

    # --- set-up ---------------------------------------------------------------------------------------------
    @staticmethod
    def _make_trainable(model: torch.nn.Module, config: Stage2Config) -> torch.nn.Module:
        """LoRA adapters on the language model (a ``PeftModel``), or the model itself with its vision tower frozen."""
        frozen = re.compile(rf"(?:^|.*\.)(?:{'|'.join(map(re.escape, config.frozen_modules))})(?:\..*)?")
        if config.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_target_modules),
                exclude_modules=frozen.pattern if config.frozen_modules else None,
                bias="none",
            )
            # Seeded, so every process (and every re-run) starts from the same adapter; the global RNG is untouched.
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # peft reads transformers' deprecated `is_gradient_checkpointing`; the warning is not the user's.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                torch.manual_seed(config.seed)
                policy = get_peft_model(model, lora)
        else:
            policy = model
            for name, parameter in policy.named_parameters():
                parameter.requires_grad_(not (config.frozen_modules and frozen.fullmatch(name)))
        if config.gradient_checkpointing:
            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            # Non-reentrant: works with frozen inputs (LoRA) and with DDP. transformers 5 renamed the method.
            options = {"use_reentrant": False}
            if hasattr(base, "activation_checkpointing_enable"):
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        if not any(p.requires_grad for p in policy.parameters()):
            raise ValueError("the MLLM has no trainable parameter: check lora_target_modules / frozen_modules")
        policy.eval()
        return policy

    # --- rollouts -------------------------------------------------------------------------------------------
    def rollout(self, examples: Sequence[TrainExample]) -> list[list[Rollout]]:
        """``group_size`` joint rollouts of each example (one group per example), without any update."""
        if not examples:
            raise ValueError("a stage-2 step needs at least one example")
        self.policy_model_wrapped.eval()
        return [self._rollout_group(example) for example in examples]

    def _rollout_context(self) -> RolloutContext:
        return RolloutContext(
            config=self.config,
            mllm=self.mllm,
            sampler=self.sampler,
            encoder=self.encoder,
            frame_store=self.frame_store,
            next_seeds=self._next_seeds,
            draw_generator=self.draw_generator,
        )

    def _rollout_group(self, example: TrainExample) -> list[Rollout]:
        group = rollout_group(example, self._rollout_context())
        if self.config.kl_beta > 0:
            self._record_reference_logprobs(group)
        return group

    def _next_seeds(self, count: int) -> list[int]:
        """``count`` generation seeds from the trainer's generator."""
        return [int(seed) for seed in torch.randint(0, 2**62, (count,), generator=self.generator).tolist()]

    # --- scoring ------------------------------------------------------------------------------------------
    def _scoring_batches(
        self, groups: Sequence[Sequence[Rollout]], advantages: Sequence[float], *, every_rollout: bool = False
    ) -> list[_ScoringBatch]:
        """The forward passes that score ``groups``, in order: per group its query turns, then its answer turns,
        consecutive rollouts together while their padded size stays within ``scoring_max_tokens`` (by default the
        longest of these turns). Rollouts with a zero advantage carry no gradient without a KL term and are left out
        (their tokens still count in the token mean), unless ``every_rollout``."""
        scored_groups = []
        offset = 0
        for group in groups:
            group_advantages = advantages[offset : offset + len(group)]
            offset += len(group)
            scored_groups.append(
                [
                    (rollout, advantage)
                    for rollout, advantage in zip(group, group_advantages, strict=True)
                    if every_rollout or advantage != 0 or self.config.kl_beta > 0
                ]
            )
        budget = self.config.scoring_max_tokens or max(
            (_ScoringBatch.row_length(r, turn) for scored in scored_groups for r, _ in scored for turn in TURNS),
            default=0,
        )
        batches = []
        for scored in scored_groups:
            for turn in TURNS:
                rows: list[Rollout] = []
                row_advantages: list[float] = []
                longest = 0
                for rollout, advantage in scored:
                    length = _ScoringBatch.row_length(rollout, turn)
                    if rows and (len(rows) + 1) * max(longest, length) > budget:  # padded size of the pass
                        batches.append(_ScoringBatch(turn, rows, row_advantages))
                        rows, row_advantages, longest = [], [], 0
                    rows.append(rollout)
                    row_advantages.append(advantage)
                    longest = max(longest, length)
                if rows:
                    batches.append(_ScoringBatch(turn, rows, row_advantages))
        return batches

    def _logprobs(self, batch: _ScoringBatch, model: torch.nn.Module) -> list[torch.Tensor]:
        """The batch's token log-probabilities under ``model`` in one forward pass (under the accelerator's
        autocast, which then also covers the query turn's shared image features computed before the pass)."""
        autocast = self.accelerator.autocast() if self.accelerator is not None else contextlib.nullcontext()
        with autocast:
            return self.mllm.token_logprobs_batch(
                batch.chats(), batch.token_ids(), self.config.temperature, model=model
            )

    @torch.no_grad()
    def _record_reference_logprobs(self, group: Sequence[Rollout]) -> None:
        """The reference model's log-probabilities of every reply of ``group`` (for the KL term)."""
        for batch in self._scoring_batches([group], [0.0] * len(group), every_rollout=True):
            with self._reference() as reference_model:
                batch.record("ref", [logprobs.cpu() for logprobs in self._logprobs(batch, reference_model)])

    @torch.no_grad()
    def _record_old_logprobs(self, groups: Sequence[Sequence[Rollout]]) -> None:
        """Score the rollouts the update trains on and that have no old log-probabilities yet, with the policy as it
        generated (eval mode: no dropout), for several PPO epochs."""
        self.policy_model.eval()
        for batch in self._scoring_batches(groups, self.mllm_advantages(groups)):
            if any(old is None for old in batch.logprobs("old")):
                logprobs = self._logprobs(batch, self.policy_model)  # unwrapped: no DDP collective
                batch.record("old", [values.cpu() for values in logprobs], keep_existing=True)

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """The reference model: the policy with its adapter disabled (LoRA; unwrapped, for no-grad passes), or the
        frozen copy (full)."""
        if self.reference_model is not None:
            yield self.reference_model
            return
        with self.policy_model.disable_adapter():
            yield self.policy_model

    # --- update ---------------------------------------------------------------------------------------------
    def step(self, examples: Sequence[TrainExample]) -> Stage2StepStats:
        """Rollouts of ``examples`` (this process's share of the step), then one update of both models.

        Raises :class:`~msjoe.errors.NonFiniteLossError`, carrying the rollouts, without stepping the optimisers
        if a loss or a gradient norm is NaN or infinite.
        """
        started = time.perf_counter()
        # The update scores the very chats the rollouts generated from: preprocess each once.
        with self.mllm.reusing_encodings():
            groups = self.rollout(examples)
            return self.update(groups, rollout_seconds=time.perf_counter() - started)

    def update(self, groups: Sequence[Sequence[Rollout]], *, rollout_seconds: float = 0.0) -> Stage2StepStats:
        """Update both models from ``groups`` (one list of G rollouts per item): ``ppo_epochs`` MLLM steps and one
        sampler step, then advance the lr schedules and the step count."""
        started = time.perf_counter()
        config = self.config
        self._check_groups(groups)
        rollouts = [rollout for group in groups for rollout in group]

        self.sampler_optimizer.zero_grad(set_to_none=True)
        sampler_stats = self.sampler_backward(groups)
        if config.ppo_epochs > 1:
            # Later epochs need the generating policy's values; one epoch uses its own forward's (ratio 1).
            self._record_old_logprobs(groups)
        clip_fractions: list[float] = []
        first: dict[str, Any] = {}
        sampler_norm = mllm_norm = math.nan
        for epoch in range(config.ppo_epochs):
            self.mllm_optimizer.zero_grad(set_to_none=True)
            mllm_stats = self.mllm_backward(groups)
            clip_fractions.append(mllm_stats["clip_fraction"])
            losses = {"mllm_loss": mllm_stats["loss"]}
            if epoch == 0:
                first = mllm_stats
                losses["sampler_loss"] = sampler_stats["loss"]
            # Checked before any optimiser step of the epoch (the sampler's loss is already known).
            self._raise_if_not_finite(losses, groups, epoch)
            mllm_norm = self._clip(self.policy_model_wrapped, config.mllm_max_grad_norm)
            norms = {"mllm_grad_norm": mllm_norm}
            if epoch == 0:
                sampler_norm = self._clip(self.sampler_model_wrapped, config.sampler_max_grad_norm)
                norms["sampler_grad_norm"] = sampler_norm
            self._raise_if_not_finite(norms, groups, epoch)
            if epoch == 0:
                self.sampler_optimizer.step()
            self.mllm_optimizer.step()
        self.mllm_optimizer.zero_grad(set_to_none=True)
        self.sampler_optimizer.zero_grad(set_to_none=True)
        self.policy_model_wrapped.eval()
        self.mllm_scheduler.step()
        self.sampler_scheduler.step()
        self.step_count += 1
        self.sampler.training_steps += 1
        return self._stats(
            rollouts,
            groups,
            mllm_loss=first["loss"],
            kl=first["kl"],
            clip_fraction=sum(clip_fractions) / len(clip_fractions),
            sampler_stats=sampler_stats,
            mllm_grad_norm=mllm_norm,
            sampler_grad_norm=sampler_norm,
            rollout_seconds=rollout_seconds,
            update_seconds=time.perf_counter() - started,
        )

    def mllm_backward(self, groups: Sequence[Sequence[Rollout]]) -> dict[str, float]:
        """Accumulate the gradient of the PPO-clip loss (plus the KL term) over every turn of every rollout.

        Each forward pass scores one turn of rollouts of one group (as many as fit in ``scoring_max_tokens``) and is
        followed by its own backward (under ``no_sync`` except the last), scaled so the sum over passes and processes
        is the token-mean over the whole step. A group with zero advantages contributes no gradient and is skipped
        when there is no KL term (its tokens still count in the mean). A rollout without old log-probabilities takes
        this pass's, detached (ratio 1), and records them. Returns the loss (the sum of the passes' parts, reduced
        over processes), ``kl`` (token mean, None without a reference) and ``clip_fraction`` over the scored tokens.
        """
        config = self.config
        self._check_groups(groups)
        advantages = self.mllm_advantages(groups)
        rollouts = [rollout for group in groups for rollout in group]
        local_tokens = sum(rollout.num_tokens for rollout in rollouts)
        total_tokens = self._sum_over_processes(torch.tensor([float(local_tokens)]))[0]
        # DDP averages gradients over processes: scale by W / N so the average is the global token mean.
        denominator = total_tokens / self._num_processes

        batches = self._scoring_batches(groups, advantages)
        if not batches:
            # Every process must run the synchronised backward: use the last turn of the step (zero advantage).
            batches = [_ScoringBatch("answer", [rollouts[-1]], [0.0])]
        if config.kl_beta > 0 and any(ref is None for batch in batches for ref in batch.logprobs("ref")):
            raise ValueError(
                f"kl_beta = {config.kl_beta} needs the rollouts' reference log-probabilities: use rollouts made by "
                "Stage2Trainer.rollout with this config"
            )
        self.policy_model_wrapped.train()
        device = self.mllm.device
        loss_sum, kl_sum, clipped, scored = 0.0, 0.0, 0.0, 0
        for position, batch in enumerate(batches):
            synchronise = position == len(batches) - 1
            with self._no_sync(self.policy_model_wrapped, not synchronise):
                logprobs = self._logprobs(batch, self.policy_model_wrapped)
                old = [
                    new.detach() if recorded is None else recorded.to(device)
                    for new, recorded in zip(logprobs, batch.logprobs("old"), strict=True)
                ]
                references = batch.logprobs("ref")
                has_references = all(reference is not None for reference in references)
                loss, stats = ppo_clip_token_loss(
                    _padded(logprobs),
                    _padded(old),
                    torch.tensor(batch.advantages, dtype=torch.float32, device=device),
                    _padded([torch.ones_like(values, dtype=torch.bool) for values in logprobs]),
                    clip_eps=config.clip_epsilon,
                    ref_logprobs=_padded([r.to(device) for r in references]) if has_references else None,
                    kl_beta=config.kl_beta,
                    num_tokens=denominator,
                )
                self._backward(loss)
            batch.record("old", [values.detach().cpu() for values in logprobs], keep_existing=True)
            count = sum(len(values) for values in logprobs)
            loss_sum += float(loss.detach()) / self._num_processes  # the backward scale is W / N, the mean 1 / N
            clipped += float(stats["clip_fraction"]) * count
            if "kl_mean" in stats:
                kl_sum += float(stats["kl_mean"]) * count
            scored += count
        # Each process's loss is its share of the global token mean; the sum over processes is the loss.
        totals = self._sum_over_processes(torch.tensor([loss_sum, kl_sum, clipped, float(scored)]))
        return {
            "loss": totals[0],
            "kl": totals[1] / max(totals[3], 1.0) if config.kl_beta > 0 else None,
            "clip_fraction": totals[2] / max(totals[3], 1.0),
        }

    def sampler_backward(self, groups: Sequence[Sequence[Rollout]]) -> dict[str, float]:
        """Accumulate the gradient of the sampler's REINFORCE loss: one batched forward over all rollouts."""
        config = self.config
        self._check_groups(groups)
        rollouts = [rollout for group in groups for rollout in group]
        rewards = torch.tensor([[rollout.reward for rollout in group] for group in groups], dtype=torch.float64)
        advantages = sampler_advantages(rewards, config.sampler_advantage, eps=config.advantage_eps).flatten()
        self.sampler_model_wrapped.train()
        logits = self.sampler.logits_batch([rollout.sim for rollout in rollouts], module=self.sampler_model_wrapped)
        log_probs = torch.stack(
            [
                self.sampler.sequence_log_prob(
                    row, torch.tensor(rollout.draw_order, device=row.device), config.estimator
                )
                for row, rollout in zip(logits, rollouts, strict=True)
            ]
        )
        loss = reinforce_loss(log_probs, advantages.to(log_probs.device))
        self._backward(loss)
        return {
            "loss": self._sum_over_processes(torch.tensor([float(loss.detach())]))[0] / self._num_processes,
            "advantages": advantages.tolist(),
        }

    def mllm_advantages(self, groups: Sequence[Sequence[Rollout]]) -> list[float]:
        """GRPO advantages of every rollout, flattened in group order."""
        rewards = torch.tensor([[rollout.reward for rollout in group] for group in groups], dtype=torch.float64)
        return group_advantages(rewards, eps=self.config.advantage_eps).flatten().tolist()

    # --- helpers --------------------------------------------------------------------------------------------
    def _check_groups(self, groups: Sequence[Sequence[Rollout]]) -> None:
        if not groups:
            raise ValueError("an update needs at least one group of rollouts")
        sizes = {len(group) for group in groups}
        if len(sizes) != 1 or min(sizes) < 2:
            raise ValueError(f"every group needs the same number (>= 2) of rollouts, got sizes {sorted(sizes)}")

    def _raise_if_not_finite(self, values: dict[str, float], groups: Sequence[Sequence[Rollout]], epoch: int) -> None:
        """Stop (on every process: the values are already reduced) before any optimiser step of this epoch."""
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if not bad:
            return
        self.mllm_optimizer.zero_grad(set_to_none=True)
        self.sampler_optimizer.zero_grad(set_to_none=True)
        self.policy_model_wrapped.eval()
        step = self.step_count + 1
        described = ", ".join(f"{name} {value}" for name, value in bad.items())
        raise NonFiniteLossError(
            f"stage-2 step {step} (PPO epoch {epoch + 1}): {described}; the optimisers were not stepped",
            step=step,
            batch={"epoch": epoch, "values": values, "rollouts": [[r.to_dict() for r in g] for g in groups]},
        )

    def _stats(
        self,
        rollouts: list[Rollout],
        groups: Sequence[Sequence[Rollout]],
        *,
        mllm_loss: float,
        kl: float | None,
        clip_fraction: float,
        sampler_stats: dict[str, Any],
        mllm_grad_norm: float,
        sampler_grad_norm: float,
        rollout_seconds: float,
        update_seconds: float,
    ) -> Stage2StepStats:
        advantages = self.mllm_advantages(groups)
        # Per rollout, under the name of the statistic that is its mean over every rollout of every process.
        local = [
            {
                "reward": r.reward,
                "reward_accuracy": r.reward_accuracy,
                "reward_format": r.reward_format,
                "reward_info": r.reward_info,
                "accuracy": float(r.correct),
                "format_rate": float(r.queries_well_formed and r.answer_well_formed),
                "query_format_rate": float(r.queries_well_formed),
                "answer_format_rate": float(r.answer_well_formed),
                "info_rate": r.info_fraction,
                "question_fallback_rate": float(r.queries_from_question),
                "advantage_abs_mean": abs(a),
                "sampler_advantage_mean": s,
                "sampler_entropy": r.sampler_entropy,
                "sampler_entropy_ratio": _entropy_ratio(r),
                "query_tokens": float(len(r.query_token_ids)),
                "answer_tokens": float(len(r.answer_token_ids)),
            }
            for r, a, s in zip(rollouts, advantages, sampler_stats["advantages"], strict=True)
        ]
        positions = [p for r in rollouts for p in r.frame_positions()]
        tied = [float(len({r.reward for r in group}) == 1) for group in groups]
        everything, positions = self._gather(local), self._gather(positions)
        tied, timing = self._gather(tied), self._gather([(rollout_seconds, update_seconds)])

        def std(key: str) -> float:
            return float(torch.tensor([record[key] for record in everything], dtype=torch.float64).std(correction=0))

        return Stage2StepStats(
            **{key: sum(record[key] for record in everything) / len(everything) for key in local[0]},
            step=self.step_count,
            num_rollouts=len(everything),
            mllm_loss=mllm_loss,
            sampler_loss=sampler_stats["loss"],
            reward_std=std("reward"),
            tied_group_rate=sum(tied) / len(tied),
            sampler_advantage_std=std("sampler_advantage_mean"),
            kl=kl,
            clip_fraction=clip_fraction,
            mllm_grad_norm=mllm_grad_norm,
            sampler_grad_norm=sampler_grad_norm,
            mllm_learning_rate=float(self.mllm_scheduler.get_last_lr()[0]),
            sampler_learning_rate=float(self.sampler_scheduler.get_last_lr()[0]),
            frame_positions=tuple(positions),
            rollout_seconds=max(t[0] for t in timing),
            update_seconds=max(t[1] for t in timing),
            seconds=max(t[0] + t[1] for t in timing),
        )

    # --- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Step count, this process's generators and the two lr schedulers (models and optimisers are saved
        separately, e.g. by ``accelerator.save_state``)."""
        return {
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "draw_generator": self.draw_generator.get_state(),
            "mllm_scheduler": self.mllm_scheduler.state_dict(),
            "sampler_scheduler": self.sampler_scheduler.state_dict(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (load models and optimisers separately)."""
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])
        self.draw_generator.set_state(state["draw_generator"])
        self.mllm_scheduler.load_state_dict(state["mllm_scheduler"])
        self.sampler_scheduler.load_state_dict(state["sampler_scheduler"])


TURNS: tuple[Turn, ...] = ("query", "answer")


@dataclass(frozen=True)
class _ScoringBatch:
    """One forward pass of scoring: one turn of some rollouts of one group, with their GRPO advantages."""

    turn: Turn
    rollouts: list[Rollout]
    advantages: list[float]

    def chats(self) -> list[list[Message]]:
        """The turn's chats (a group's query chats are one shared list: the backend encodes it once)."""
        return [getattr(rollout, f"{self.turn}_messages") for rollout in self.rollouts]

    def token_ids(self) -> list[list[int]]:
        return [getattr(rollout, f"{self.turn}_token_ids") for rollout in self.rollouts]

    @staticmethod
    def row_length(rollout: Rollout, turn: Turn) -> int:
        """Positions of ``rollout``'s ``turn`` in a scoring pass: its prompt and its reply."""
        return getattr(rollout, f"{turn}_prompt_tokens") + len(getattr(rollout, f"{turn}_token_ids"))

    def logprobs(self, kind: Literal["old", "ref"]) -> list[torch.Tensor | None]:
        return [getattr(rollout, f"{self.turn}_{kind}_logprobs") for rollout in self.rollouts]

    def record(self, kind: Literal["old", "ref"], values: list[torch.Tensor], *, keep_existing: bool = False) -> None:
        """Store per-rollout log-probabilities of this turn (``keep_existing``: only where there are none yet)."""
        name = f"{self.turn}_{kind}_logprobs"
        for rollout, value in zip(self.rollouts, values, strict=True):
            if not (keep_existing and getattr(rollout, name) is not None):
                setattr(rollout, name, value)


def _entropy_ratio(rollout: Rollout) -> float:
    """The sampler's entropy over ``log T`` (1: uniform over the candidates)."""
    return rollout.sampler_entropy / math.log(rollout.num_candidates) if rollout.num_candidates > 1 else 1.0


def _padded(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, L]`` from rows of different lengths, right-padded with zeros (masked out by the loss)."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
