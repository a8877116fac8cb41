"""The hyper-parameters of stage-2 joint training: :class:`Stage2Config`, saved with checkpoints and run configs.

The trainer is :mod:`msjoe.train.stage2`, its rollouts :mod:`msjoe.train.stage2_rollout`; the method and our
choices are in docs/decisions.md ("Training runs").
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from msjoe.checks import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bounds, check_fields
from msjoe.frame_store import DEFAULT_MAX_PIXELS
from msjoe.limits import MAX_QUERIES
from msjoe.mllm.prompts import PREVIEW_MAX_PIXELS
from msjoe.rl.advantages import SamplerAdvantageMode
from msjoe.rl.rewards import DEFAULT_INFO_THRESHOLD, RewardWeights
from msjoe.rl.schedule import LRSchedule, ScheduledConfig
from msjoe.samplers.selection import Estimator

__all__ = ["FINETUNE_MODES", "LORA_TARGET_MODULES", "SAMPLER_ADVANTAGE_MODES", "VISION_MODULES", "Stage2Config"]

Finetune = Literal["lora", "full"]
FINETUNE_MODES: tuple[str, ...] = typing.get_args(Finetune)
SAMPLER_ADVANTAGE_MODES: tuple[str, ...] = typing.get_args(SamplerAdvantageMode)

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of Qwen2/Llama-style language models."""
VISION_MODULES = ("visual", "vision_tower", "vision_model")
"""Sub-module names of the vision tower in transformers' VLMs (Qwen2/2.5-VL: ``visual``; LLaVA: ``vision_tower``)."""


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Stage2Config(ScheduledConfig):
    """Hyper-parameters of stage-2 joint training (saved with checkpoints; see :meth:`to_dict`).

    Values marked "paper" come from MSJoE; the others are ours and documented. Per-process quantities
    (``batch_size``) multiply by the number of processes under ``accelerate``.
    """

    # --- schedule -------------------------------------------------------------------------------------------
    steps: Annotated[int, AT_LEAST_0] = 500
    """Optimiser steps of a run (also the length of the cosine schedule)."""
    batch_size: Annotated[int, AT_LEAST_1] = 2
    """Training items per step *per process*; each gets ``group_size`` rollouts."""
    group_size: Annotated[int, Bounds(2, why="GRPO normalises rewards within a group")] = 8
    """G: rollouts per item, the GRPO group (paper-like; at least 2, a group of one has no advantage)."""
    seed: Annotated[int, AT_LEAST_0] = 0
    """Seeds the trainer's generators (generation seeds, the sampler's draws, the LoRA initialisation); each process
    derives its own streams from it."""

    # --- rollouts -------------------------------------------------------------------------------------------
    k: Annotated[int, AT_LEAST_1] = 32
    """K: frames the U-Sampler draws for the answer turn (paper's main table: 32 and 64)."""
    max_queries: Annotated[int, Bounds(1, MAX_QUERIES)] = MAX_QUERIES
    """Most queries the MLLM may write (paper: 4)."""
    preview_max_pixels: Annotated[int, AT_LEAST_1] = PREVIEW_MAX_PIXELS
    """Pixel budget of each of the K/2 preview frames of the query turn (paper: about 32 visual tokens)."""
    frame_max_pixels: Annotated[int, AT_LEAST_1] = DEFAULT_MAX_PIXELS
    """Pixel budget of each key frame of the answer turn (the pipeline's default)."""
    temperature: Annotated[float, Bounds(0, low_open=True, why="rollouts are sampled")] = 1.0
    """Sampling temperature of both MLLM turns (> 0: GRPO needs diverse rollouts and defined probabilities)."""
    top_p: Annotated[float, Bounds(0, 1, low_open=True)] = 1.0
    """Nucleus mass of both turns. The PPO ratio ignores the truncation (docs/decisions.md): keep 1.0 for an exact
    on-policy ratio."""
    query_max_new_tokens: Annotated[int, AT_LEAST_1] = 128
    """Token budget of the query reply (the pipeline's default)."""
    answer_max_new_tokens: Annotated[int, AT_LEAST_1] = 32
    """Token budget of the answer reply (the pipeline's default)."""
    generation_batch_size: Annotated[int | None, AT_LEAST_1] = None
    """Rollouts generated in one batched ``generate`` call per turn. None: the whole group, except the answer turn
    on a CPU, one at a time (a batch's padding mask moves CPU attention off its fused kernel: bench/RESULTS.md).
    Lower it when a group of answer prompts (K frames each) does not fit in memory at once."""
    scoring_max_tokens: Annotated[int | None, AT_LEAST_1] = None
    """Most positions (rows x longest row, prompts with their image tokens included) in one scoring forward pass,
    like verl's ``ppo_max_token_len_per_gpu``. None: the longest turn being scored (no pass larger than scoring one
    turn at a time). Raise it (e.g. 16384) to batch answer turns when memory allows; results do not depend on it
    beyond float rounding (measurements: bench/RESULTS.md)."""

    # --- rewards and advantages -----------------------------------------------------------------------------
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    """Weights of r_acc, r_format and r_info (see :class:`~msjoe.rl.rewards.RewardWeights`)."""
    info_threshold: Annotated[float, AT_LEAST_0] = DEFAULT_INFO_THRESHOLD
    """Prominence (robust sigmas) a query's similarity peak needs to count as informative (r_info)."""
    info_min_gap: Annotated[float, AT_LEAST_0] = 0.0
    """Optional absolute floor on a peak's height above the row median (r_info)."""
    advantage_eps: Annotated[float, AT_LEAST_0] = 1e-6
    """Added to the group's reward standard deviation in the GRPO advantage."""
    sampler_advantage: SamplerAdvantageMode = "raw"
    """The sampler's advantage: ``"raw"`` (paper: the total reward) or ``"group"`` (group-normalised)."""
    estimator: Estimator = "plackett_luce"
    """``log P(draw)`` of the sampler: ``"plackett_luce"`` (exact for draws without replacement) or
    ``"independent"`` (the paper's ``sum_k log p(x_k)``)."""

    # --- MLLM update ----------------------------------------------------------------------------------------
    clip_epsilon: Annotated[float, Bounds(0, 1, low_open=True, high_open=True)] = 0.2
    """PPO clip range."""
    kl_beta: Annotated[float, AT_LEAST_0] = 0.0
    """Weight of the k3 KL to the reference model (paper: configurable, default 0). With LoRA the reference is the
    base model (adapter disabled, no extra memory); with full fine-tuning a frozen copy of the starting weights."""
    ppo_epochs: Annotated[int, AT_LEAST_1] = 1
    """Optimiser steps of the MLLM on each batch of rollouts (1: on-policy, the ratio is 1 at the gradient)."""
    finetune: Finetune = "lora"
    """``"lora"`` (``peft`` adapters on the language model) or ``"full"`` (every language-model weight)."""
    lora_r: Annotated[int, AT_LEAST_1] = 16
    """LoRA rank."""
    lora_alpha: Annotated[float, POSITIVE] = 32.0
    """LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``)."""
    lora_dropout: Annotated[float, Bounds(0, 1, high_open=True)] = 0.0
    """Dropout on the LoRA input. 0 by default: with several PPO epochs, dropout makes the ratios differ from 1 by
    noise (the old log-probabilities are scored in eval mode)."""
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    """Names of the linear layers that get adapters (matched as the last component of a module's name)."""
    frozen_modules: tuple[str, ...] = VISION_MODULES
    """Sub-modules never trained, matched as a component of a module's name: the vision tower (with its
    projector/merger) by default. LoRA excludes them from its targets; full fine-tuning freezes them."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on large models, costs about one more forward)."""
    mllm_learning_rate: Annotated[float, POSITIVE] = 1e-5
    """AdamW peak learning rate of the MLLM's trainable weights (ours; LoRA. Full fine-tuning wants ~1e-6)."""
    mllm_weight_decay: Annotated[float, AT_LEAST_0] = 0.0
    """AdamW weight decay of the MLLM's trainable weights."""
    mllm_max_grad_norm: Annotated[float | None, POSITIVE] = 1.0
    """Clip the MLLM's global gradient norm (None: no clipping)."""

    # --- sampler update -------------------------------------------------------------------------------------
    sampler_learning_rate: Annotated[float, POSITIVE] = 1e-4
    """AdamW peak learning rate of the U-Sampler (ours: a tenth of stage 1's, which this stage continues)."""
    sampler_weight_decay: Annotated[float, AT_LEAST_0] = 0.0
    """AdamW weight decay of the U-Sampler."""
    sampler_max_grad_norm: Annotated[float | None, POSITIVE] = 1.0
    """Clip the U-Sampler's global gradient norm (None: no clipping)."""

    # --- learning-rate schedule (both optimisers) ------------------------------------------------------------
    lr_schedule: LRSchedule = "constant"
    """``"constant"`` or ``"cosine"`` (to ``min_lr_ratio`` of the peak over ``steps``); both after warmup."""
    warmup_steps: Annotated[int, AT_LEAST_0] = 10
    """Linear warmup from 0 to the peak over this many steps."""
    min_lr_ratio: Annotated[float, Bounds(0, 1)] = 0.1
    """Final learning rate of the cosine schedule as a fraction of the peak."""

    def __post_init__(self) -> None:
        # YAML gives lists and mappings: normalise them so configs compare equal and stay hashable.
        if isinstance(self.reward_weights, dict):
            try:
                self.reward_weights = RewardWeights(**self.reward_weights)
            except ValueError as error:  # "format must be ..." alone would not say whose format
                raise ValueError(f"reward_weights.{error}") from error
        if not isinstance(self.reward_weights, RewardWeights):
            raise ValueError(f"reward_weights must be a RewardWeights or a mapping, got {self.reward_weights!r}")
        self.lora_target_modules = _names(self.lora_target_modules, "lora_target_modules", allow_empty=False)
        self.frozen_modules = _names(self.frozen_modules, "frozen_modules", allow_empty=True)
        check_fields(self)  # every field's type and range, from its annotation

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-ready mapping (tuples as lists, the reward weights as a mapping)."""
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        data["frozen_modules"] = list(self.frozen_modules)
        return data


def _names(value: Any, name: str, *, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name} must be a list of module names, got {value!r}")
    names = tuple(value)
    if not names and not allow_empty:
        raise ValueError(f"{name} must name at least one module")
    return names
