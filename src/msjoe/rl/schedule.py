"""The learning-rate schedule both training stages use: linear warmup, then constant or cosine decay."""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["constant", "cosine"]
LR_SCHEDULES = ("constant", "cosine")


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
