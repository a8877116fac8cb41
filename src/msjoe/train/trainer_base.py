"""What both trainers share: the optimisation plumbing over an optional ``accelerate.Accelerator`` (backward,
gradient clipping, reductions and gathers across processes, skipping DDP's gradient sync)."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["TrainerBase"]


class TrainerBase:
    """Base of :class:`~msjoe.train.stage1.Stage1Trainer` and :class:`~msjoe.train.stage2.Stage2Trainer`: the
    subclass sets :attr:`accelerator` (None: one plain process)."""

    accelerator: Accelerator | None

    @property
    def _num_processes(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    def _sum_over_processes(self, values: torch.Tensor) -> list[float]:
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values.double().to(self.accelerator.device), reduction="sum").cpu()
        return [float(value) for value in values]

    def _gather(self, values: list[Any]) -> list[Any]:
        """Concatenate per-process lists (all processes must call it)."""
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            return list(gather_object(values))
        return values

    def _no_sync(self, module: torch.nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager[Any]:
        if skip_sync and self.accelerator is not None:
            return self.accelerator.no_sync(module)
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def _clip(self, module: torch.nn.Module, max_norm: float | None) -> float:
        parameters = [p for p in module.parameters() if p.grad is not None]
        limit = math.inf if max_norm is None else max_norm
        if self.accelerator is not None:
            return float(self.accelerator.clip_grad_norm_(parameters, limit))
        return float(torch.nn.utils.clip_grad_norm_(parameters, limit))

    def _mean_over_processes(self, values: torch.Tensor) -> list[float]:
        """Means over processes of per-process statistics (each process runs the same number of items)."""
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values.double().to(self.accelerator.device), reduction="mean").cpu()
        return [float(value) for value in values]
