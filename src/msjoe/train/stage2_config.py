"""The hyper-parameters of stage-2 joint training: :class:`Stage2Config`, saved with checkpoints and run configs.

The trainer is :mod:`msjoe.train.stage2`, its rollouts :mod:`msjoe.train.stage2_rollout`; the method and our
choices are in docs/decisions.md ("Training runs").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from msjoe.checks import is_int
from msjoe.frame_store import DEFAULT_MAX_PIXELS
from msjoe.limits import MAX_QUERIES
from msjoe.mllm.prompts import PREVIEW_MAX_PIXELS
from msjoe.rl.advantages import SamplerAdvantageMode
from msjoe.rl.rewards import DEFAULT_INFO_THRESHOLD, RewardWeights
from msjoe.rl.schedule import LR_SCHEDULES, LRSchedule, lr_factor
from msjoe.samplers.selection import ESTIMATORS, Estimator

__all__ = ["FINETUNE_MODES", "LORA_TARGET_MODULES", "SAMPLER_ADVANTAGE_MODES", "VISION_MODULES", "Stage2Config"]

Finetune = Literal["lora", "full"]
FINETUNE_MODES = ("lora", "full")
SAMPLER_ADVANTAGE_MODES = ("raw", "group")

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The attention and MLP projections of Qwen2/Llama-style language models."""
VISION_MODULES = ("visual", "vision_tower", "vision_model")
"""Sub-module names of the vision tower in transformers' VLMs (Qwen2/2.5-VL: ``visual``; LLaVA: ``vision_tower``)."""


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Stage2Config:
    """Hyper-parameters of stage-2 joint training (saved with checkpoints; see :meth:`to_dict`).

    Values marked "paper" come from MSJoE; the others are ours and documented. Per-process quantities
    (``batch_size``) multiply by the number of processes under ``accelerate``.
    """

    # --- schedule -------------------------------------------------------------------------------------------
    steps: int = 500
    """Optimiser steps of a run (also the length of the cosine schedule)."""
    batch_size: int = 2
    """Training items per step *per process*; each gets ``group_size`` rollouts."""
    group_size: int = 8
    """G: rollouts per item, the GRPO group (paper-like; at least 2, a group of one has no advantage)."""
    seed: int = 0
    """Seeds the trainer's generators (generation seeds, the sampler's draws, the LoRA initialisation); each process
    derives its own streams from it."""

    # --- rollouts -------------------------------------------------------------------------------------------
    k: int = 32
    """K: frames the U-Sampler draws for the answer turn (paper's main table: 32 and 64)."""
    max_queries: int = MAX_QUERIES
    """Most queries the MLLM may write (paper: 4)."""
    preview_max_pixels: int = PREVIEW_MAX_PIXELS
    """Pixel budget of each of the K/2 preview frames of the query turn (paper: about 32 visual tokens)."""
    frame_max_pixels: int = DEFAULT_MAX_PIXELS
    """Pixel budget of each key frame of the answer turn (the pipeline's default)."""
    temperature: float = 1.0
    """Sampling temperature of both MLLM turns (> 0: GRPO needs diverse rollouts and defined probabilities)."""
    top_p: float = 1.0
    """Nucleus mass of both turns. The PPO ratio ignores the truncation (docs/decisions.md): keep 1.0 for an exact
    on-policy ratio."""
    query_max_new_tokens: int = 128
    """Token budget of the query reply (the pipeline's default)."""
    answer_max_new_tokens: int = 32
    """Token budget of the answer reply (the pipeline's default)."""
    generation_batch_size: int | None = None
    """Rollouts generated in one batched ``generate`` call per turn. None: the whole group, except the answer turn
    on a CPU, one at a time (a batch's padding mask moves CPU attention off its fused kernel: bench/RESULTS.md).
    Lower it when a group of answer prompts (K frames each) does not fit in memory at once."""
    scoring_max_tokens: int | None = None
    """Most positions (rows x longest row, prompts with their image tokens included) in one scoring forward pass,
    like verl's ``ppo_max_token_len_per_gpu``. None: the longest turn being scored (no pass larger than scoring one
    turn at a time). Raise it (e.g. 16384) to batch answer turns when memory allows; results do not depend on it
    beyond float rounding (measurements: bench/RESULTS.md)."""

    # --- rewards and advantages -----------------------------------------------------------------------------
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    """Weights of r_acc, r_format and r_info (see :class:`~msjoe.rl.rewards.RewardWeights`)."""
    info_threshold: float = DEFAULT_INFO_THRESHOLD
    """Prominence (robust sigmas) a query's similarity peak needs to count as informative (r_info)."""
    info_min_gap: float = 0.0
    """Optional absolute floor on a peak's height above the row median (r_info)."""
    advantage_eps: float = 1e-6
    """Added to the group's reward standard deviation in the GRPO advantage."""
    sampler_advantage: SamplerAdvantageMode = "raw"
    """The sampler's advantage: ``"raw"`` (paper: the total reward) or ``"group"`` (group-normalised)."""
    estimator: Estimator = "plackett_luce"
    """``log P(draw)`` of the sampler: ``"plackett_luce"`` (exact for draws without replacement) or
    ``"independent"`` (the paper's ``sum_k log p(x_k)``)."""

    # --- MLLM update ----------------------------------------------------------------------------------------
    clip_epsilon: float = 0.2
    """PPO clip range."""
    kl_beta: float = 0.0
    """Weight of the k3 KL to the reference model (paper: configurable, default 0). With LoRA the reference is the
    base model (adapter disabled, no extra memory); with full fine-tuning a frozen copy of the starting weights."""
    ppo_epochs: int = 1
    """Optimiser steps of the MLLM on each batch of rollouts (1: on-policy, the ratio is 1 at the gradient)."""
    finetune: Finetune = "lora"
    """``"lora"`` (``peft`` adapters on the language model) or ``"full"`` (every language-model weight)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input. 0 by default: with several PPO epochs, dropout makes the ratios differ from 1 by
    noise (the old log-probabilities are scored in eval mode)."""
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    """Names of the linear layers that get adapters (matched as the last component of a module's name)."""
    frozen_modules: tuple[str, ...] = VISION_MODULES
    """Sub-modules never trained, matched as a component of a module's name: the vision tower (with its
    projector/merger) by default. LoRA excludes them from its targets; full fine-tuning freezes them."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on large models, costs about one more forward)."""
    mllm_learning_rate: float = 1e-5
    """AdamW peak learning rate of the MLLM's trainable weights (ours; LoRA. Full fine-tuning wants ~1e-6)."""
    mllm_weight_decay: float = 0.0
    """AdamW weight decay of the MLLM's trainable weights."""
    mllm_max_grad_norm: float | None = 1.0
    """Clip the MLLM's global gradient norm (None: no clipping)."""

    # --- sampler update -------------------------------------------------------------------------------------
    sampler_learning_rate: float = 1e-4
    """AdamW peak learning rate of the U-Sampler (ours: a tenth of stage 1's, which this stage continues)."""
    sampler_weight_decay: float = 0.0
    """AdamW weight decay of the U-Sampler."""
    sampler_max_grad_norm: float | None = 1.0
    """Clip the U-Sampler's global gradient norm (None: no clipping)."""

    # --- learning-rate schedule (both optimisers) ------------------------------------------------------------
    lr_schedule: LRSchedule = "constant"
    """``"constant"`` or ``"cosine"`` (to ``min_lr_ratio`` of the peak over ``steps``); both after warmup."""
    warmup_steps: int = 10
    """Linear warmup from 0 to the peak over this many steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule as a fraction of the peak."""

    def __post_init__(self) -> None:
        # YAML gives lists and mappings: normalise them so configs compare equal and stay hashable.
        if isinstance(self.reward_weights, dict):
            self.reward_weights = RewardWeights(**self.reward_weights)
        if not isinstance(self.reward_weights, RewardWeights):
            raise ValueError(f"reward_weights must be a RewardWeights or a mapping, got {self.reward_weights!r}")
        self.lora_target_modules = _names(self.lora_target_modules, "lora_target_modules", allow_empty=False)
        self.frozen_modules = _names(self.frozen_modules, "frozen_modules", allow_empty=True)
        for name in (
            "steps",
            "batch_size",
            "group_size",
            "k",
            "max_queries",
            "preview_max_pixels",
            "frame_max_pixels",
            "query_max_new_tokens",
            "answer_max_new_tokens",
            "ppo_epochs",
            "lora_r",
            "warmup_steps",
            "seed",
        ):
            value = getattr(self, name)
            minimum = 0 if name in ("steps", "warmup_steps", "seed") else 1
            if not is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO normalises rewards within a group), got {self.group_size}")
        if self.max_queries > MAX_QUERIES:
            raise ValueError(f"max_queries must be at most {MAX_QUERIES}, got {self.max_queries}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        for name in ("info_threshold", "info_min_gap", "advantage_eps", "kl_beta", "mllm_weight_decay",
                     "sampler_weight_decay"):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.clip_epsilon < 1:
            raise ValueError(f"clip_epsilon must lie in (0, 1), got {self.clip_epsilon!r}")
        if self.sampler_advantage not in SAMPLER_ADVANTAGE_MODES:
            raise ValueError(
                f"sampler_advantage must be one of {SAMPLER_ADVANTAGE_MODES}, got {self.sampler_advantage!r}"
            )
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        for name in ("mllm_learning_rate", "sampler_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("generation_batch_size", "scoring_max_tokens"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        for name in ("mllm_max_grad_norm", "sampler_max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be None or a positive number, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-ready mapping (tuples as lists, the reward weights as a mapping)."""
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        data["frozen_modules"] = list(self.frozen_modules)
        return data

    def lr_factor(self, step: int) -> float:
        """Multiplier of both peak learning rates for update number ``step`` (0-based)."""
        return lr_factor(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.steps,
            schedule=self.lr_schedule,
            min_lr_ratio=self.min_lr_ratio,
        )


def _names(value: Any, name: str, *, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name} must be a list of module names, got {value!r}")
    names = tuple(value)
    if not names and not allow_empty:
        raise ValueError(f"{name} must name at least one module")
    return names
