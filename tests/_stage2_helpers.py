"""What tests/test_stage2.py and its two-process worker (tests/_two_process_stage2.py) share: the small stage-2
set-up (not a test module itself)."""

from __future__ import annotations

import dataclasses

import torch

from msjoe.train.stage2 import Rollout, Stage2Config, Stage2Trainer

VIDEO_FPS = 4.0
OPTIONS = ("red", "green", "blue", "grey")


def small_config(**overrides: object) -> Stage2Config:
    settings: dict[str, object] = dict(
        group_size=3, k=4, query_max_new_tokens=12, answer_max_new_tokens=6, warmup_steps=0, seed=0
    )
    return Stage2Config(**{**settings, **overrides})


def with_rewards(groups: list[list[Rollout]], rewards: tuple[float, ...]) -> list[list[Rollout]]:
    return [[dataclasses.replace(r, reward=value) for r, value in zip(group, rewards, strict=True)] for group in groups]


def perturb_lora(trainer: Stage2Trainer, seed: int = 0) -> None:
    """LoRA's B starts at zero (so A gets no gradient); random B makes every adapter weight matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in trainer.policy_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
