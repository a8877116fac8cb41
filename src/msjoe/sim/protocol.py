"""The public simulator protocol: train and compare samplers on your own simulated (or recorded) items.

A simulator is any object with ``items(n, seed)`` returning an iterable of ``n`` items; the same ``seed`` must give
the same items. An item has:

- ``sim``: a float tensor ``[Nq, T]`` of query–frame similarities (1 to 4 rows);
- ``spans``: a list of ``(start, end)`` candidate indices, end exclusive: where the evidence is;
- ``p_correct(chosen)``: a float in [0, 1], the answerer's probability of answering correctly from the candidates
  in ``chosen`` (a LongTensor of distinct indices sorted by time);
- optionally ``difficulty``: the answerer's pass rate with uniform frames at the training budget. When it is
  missing, it is estimated from ``p_correct`` on stratified uniform draws (:func:`uniform_pass_rate`).

``--simulator`` names a built-in variant (``msjoe sim list``), ``validation`` (the validation variants in turn), or
``module:factory``, where ``factory()`` (no
arguments) returns the simulator; ``module`` may also be a path to a ``.py`` file.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from msjoe.samplers.base import MAX_QUERIES
from msjoe.sim import variants


@runtime_checkable
class SimItem(Protocol):
    @property
    def sim(self) -> torch.Tensor: ...

    @property
    def spans(self) -> Sequence[tuple[int, int]]: ...

    def p_correct(self, chosen: torch.Tensor) -> float: ...


@runtime_checkable
class Simulator(Protocol):
    def items(self, n: int, seed: int) -> Iterable[SimItem]: ...


class SimulatorError(ValueError):
    """A simulator spec that cannot be loaded, or an item that breaks the protocol (the message says which)."""


def load_simulator(spec: str, *, budget: int = 16) -> Simulator:
    """A built-in variant by name (its difficulties refer to ``budget``), or ``module:factory`` called with no
    arguments."""
    if spec == variants.VALIDATION_MIX:
        return variants.MixedSimulator([v.name for v in variants.variants("validation")], budget=budget)
    if ":" not in spec:
        try:
            return variants.VariantSimulator(variants.get_variant(spec), budget=budget)
        except ValueError as exc:
            raise SimulatorError(f"{exc}, or give module:factory") from None
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise SimulatorError(f"simulator {spec!r} must be NAME or module:factory")
    module = _import(module_name)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SimulatorError(f"{module_name} has no callable {attribute!r} (simulator {spec!r})")
    simulator = factory()
    if not isinstance(simulator, Simulator):
        raise SimulatorError(f"{spec}() returned {type(simulator).__name__}, which has no items(n, seed) method")
    return simulator


def _import(module_name: str) -> Any:
    path = Path(module_name)
    if path.suffix == ".py":
        if not path.is_file():
            raise SimulatorError(f"simulator file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"msjoe_user_simulator_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise SimulatorError(f"cannot import simulator module {module_name!r}: {exc}") from exc


def checked_items(simulator: Simulator, n: int, seed: int) -> list[SimItem]:
    """``simulator.items(n, seed)`` as a list, each item checked against the protocol (errors name the item)."""
    items = list(simulator.items(n, seed))
    if len(items) != n:
        raise SimulatorError(f"items({n}, seed={seed}) returned {len(items)} items")
    for index, item in enumerate(items):
        check_item(item, index)
    return items


def check_item(item: Any, index: int = 0) -> None:
    where = f"item {index}"
    sim = getattr(item, "sim", None)
    if not isinstance(sim, torch.Tensor) or sim.ndim != 2 or not sim.is_floating_point():
        found = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
        raise SimulatorError(f"{where}: sim must be a float tensor [Nq, T], got {found}")
    num_queries, num_frames = sim.shape
    if not 1 <= num_queries <= MAX_QUERIES or num_frames < 1 or not torch.isfinite(sim).all():
        raise SimulatorError(f"{where}: sim must have 1 to {MAX_QUERIES} rows, T >= 1 and finite values")
    spans = getattr(item, "spans", None)
    if (
        spans is None
        or not all(len(span) == 2 and 0 <= int(span[0]) < int(span[1]) <= num_frames for span in spans)
        or not len(spans)
    ):
        raise SimulatorError(
            f"{where}: spans must be a non-empty list of (start, end) with 0 <= start < end <= T = {num_frames}"
        )
    if not callable(getattr(item, "p_correct", None)):
        raise SimulatorError(f"{where}: has no p_correct(chosen) method")
    difficulty = getattr(item, "difficulty", None)
    if difficulty is not None and not 0 <= float(difficulty) <= 1:
        raise SimulatorError(f"{where}: difficulty must lie in [0, 1], got {difficulty!r}")


def p_correct(item: SimItem, chosen: torch.Tensor) -> float:
    value = float(item.p_correct(chosen))
    if not 0 <= value <= 1:
        raise SimulatorError(f"p_correct returned {value!r}; it must be a probability in [0, 1]")
    return value


def evidence_recall(item: SimItem, chosen: torch.Tensor) -> float:
    """``item.coverage(chosen)`` when the item defines it (evidence that needs several frames), otherwise the
    fraction of ``spans`` with at least one chosen frame."""
    coverage = getattr(item, "coverage", None)
    if callable(coverage):
        return float(coverage(chosen))
    hits = [bool(((chosen >= start) & (chosen < end)).any()) for start, end in item.spans]
    return sum(hits) / len(hits)


def uniform_pass_rate(item: SimItem, k: int, *, draws: int = 32, seed: int = 0) -> float:
    """The answerer's pass rate with stratified uniform frames (one uniform frame in each of K equal bins).

    Exact when the item provides ``uniform_pass_rate(k)`` (the built-in variants do), otherwise the mean of
    ``p_correct`` over ``draws`` seeded draws.
    """
    exact = getattr(item, "uniform_pass_rate", None)
    if callable(exact):
        return float(exact(k))
    num_frames = item.sim.shape[1]
    if k >= num_frames:
        return p_correct(item, torch.arange(num_frames))
    generator = torch.Generator().manual_seed(seed)
    low = torch.tensor([(i * num_frames) // k for i in range(k)])
    size = torch.tensor([((i + 1) * num_frames) // k for i in range(k)]) - low
    total = 0.0
    for _ in range(draws):
        offset = (torch.rand(k, generator=generator, dtype=torch.float64) * size).long()
        total += p_correct(item, low + offset)
    return total / draws


@dataclass(frozen=True, eq=False)
class TrainingItem:
    """A protocol item as stage 1 sees it (:class:`msjoe.train.stage1.Stage1Item`): ``sim`` and ``difficulty``."""

    item: SimItem
    difficulty: float
    id: str

    @property
    def sim(self) -> torch.Tensor:
        return self.item.sim


def item_difficulty(item: SimItem, k: int, *, seed: int = 0) -> float:
    """The item's own ``difficulty``, or its :func:`uniform_pass_rate` at ``k`` when it has none (built-in items:
    exact at ``k`` whatever budget they were generated for)."""
    difficulty = getattr(item, "difficulty", None)
    if callable(getattr(item, "uniform_pass_rate", None)) and getattr(item, "budget", k) != k:
        return uniform_pass_rate(item, k)
    if difficulty is None or math.isnan(float(difficulty)):
        return uniform_pass_rate(item, k, seed=seed)
    return float(difficulty)


class ProtocolAnswerer:
    """Stage 1's answerer over protocol items.

    ``reward="expected"`` (default) returns ``p_correct``: the trainer then uses the expected difficulty-aware
    advantage, with a coin flip's mean and none of its noise. ``"sampled"`` flips a seeded coin, as a real MLLM's
    right-or-wrong answer would.
    """

    def __init__(self, reward: str = "expected", seed: int = 0) -> None:
        if reward not in ("expected", "sampled"):
            raise ValueError(f"reward must be 'expected' or 'sampled', got {reward!r}")
        self.reward = reward
        self.generator = torch.Generator().manual_seed(seed)

    def answer_correct(self, item: TrainingItem, chosen_indices: torch.Tensor) -> bool | float:
        probability = p_correct(item.item, chosen_indices)
        if self.reward == "expected":
            return probability
        return bool(torch.rand((), generator=self.generator, dtype=torch.float64) < probability)
