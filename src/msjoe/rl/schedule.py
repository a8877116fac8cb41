"""The learning-rate schedule both training stages use: linear warmup, then constant or cosine decay."""

from __future__ import annotations

import math
import typing
from typing import Literal, Protocol

LRSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = typing.get_args(LRSchedule)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: LRSchedule, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for update number ``step`` (0-based).

    Warmup rises linearly to 1 over ``warmup_steps`` updates (never 0, so the first update moves the weights);
    ``"cosine"`` then decays to ``min_lr_ratio`` at ``total_steps`` and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _ScheduleFields(Protocol):
    steps: int
    warmup_steps: int
    lr_schedule: LRSchedule
    min_lr_ratio: float


class ScheduledConfig:
    """Base of the trainers' configs (stage 1 and stage 2): :meth:`lr_factor` from their ``steps``,
    ``warmup_steps``, ``lr_schedule`` and ``min_lr_ratio`` fields, so both stages read their schedule one way."""

    def lr_factor(self: _ScheduleFields, step: int) -> float:
        """Multiplier of the peak learning rate(s) for update number ``step`` (0-based)."""
        return lr_factor(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.steps,
            schedule=self.lr_schedule,
            min_lr_ratio=self.min_lr_ratio,
        )
