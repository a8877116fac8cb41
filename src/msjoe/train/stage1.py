"""Stage 1 of MSJoE: pre-train the U-Sampler with REINFORCE and the difficulty-aware reward, the MLLM frozen.

For each item (a similarity matrix ``S`` and a difficulty ``c``, the base MLLM's pass rate with uniform frames),
the sampler draws K frames from its policy (:mod:`msjoe.samplers.policy`: sequential draws from ``softmax(logits)``
with temporal suppression), a frozen answerer answers from them,
and the sampler is pushed towards the draws that led to a correct answer (paper)::

    A    = 1 / c if correct, -1 / (1 - c) if wrong            (msjoe.rl.rewards.difficulty_advantage, |A| <= clip)
    loss = -A · log P(selected frames)                          (msjoe.rl.losses.reinforce_loss)

The difficulty-aware advantage is itself a baseline of sorts: under the uniform sampler its expectation is
``c · 1/c - (1 - c) · 1/(1 - c) = 0`` (before clipping), so only doing *better than uniform* earns a positive
signal. Two choices are ours (both configurable in :class:`Stage1Config`):

- ``samples_per_item`` draws per item share one forward pass. With ``baseline="group_mean"`` each draw's advantage
  is reduced by the mean advantage of its item's group (the standard REINFORCE variance reduction; it removes the
  item-level luck — an item the sampler already solves, or cannot solve — and keeps only "this draw was better
  than the other draws of the same item"). ``samples_per_item=1, baseline="none"`` is the paper's form.
- the log-probability is the policy's exact one by default (``estimator="independent"``: the paper's sum).

The answerer is an interface, :class:`Answerer` (``answer_correct(item, chosen_indices) -> bool``), so the same
loop trains against :class:`msjoe.sim.planted.SimulatedAnswerer` on CPU or against a real MLLM. Items are any
objects with ``sim`` and ``difficulty`` (:class:`Stage1Item`); the answerer receives the item itself, so it can
carry whatever the answerer needs (the video, the question and options, the gold letter).

:class:`Stage1Trainer` owns the optimiser and the sampling RNG; :meth:`Stage1Trainer.state_dict` captures both
with the step count, so a run resumes exactly (the answerer's own RNG, if any, is the caller's to save).
"""

from __future__ import annotations

import logging
import math
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

import torch

from msjoe.checks import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bounds, check_fields
from msjoe.errors import NonFiniteLossError
from msjoe.rl.losses import reinforce_loss
from msjoe.rl.rewards import difficulty_advantage
from msjoe.rl.schedule import LRSchedule, ScheduledConfig
from msjoe.rl.seeding import derive_seed
from msjoe.samplers.selection import Estimator
from msjoe.samplers.usampler import USampler
from msjoe.train.trainer_base import TrainerBase

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

Baseline = Literal["none", "group_mean"]
BASELINES: tuple[str, ...] = typing.get_args(Baseline)
AnswerReward = Literal["correct", "gold_probability"]
ANSWER_REWARDS: tuple[str, ...] = typing.get_args(AnswerReward)


@runtime_checkable
class Stage1Item(Protocol):
    """What stage 1 needs from a training item."""

    @property
    def sim(self) -> torch.Tensor:
        """Query-frame similarities ``[Nq, T]``."""
        ...

    @property
    def difficulty(self) -> float:
        """The base MLLM's pass rate ``c`` in [0, 1] with uniform frames, at the training budget."""
        ...


@runtime_checkable
class Answerer(Protocol):
    """The frozen MLLM of stage 1, reduced to what REINFORCE needs: was the answer from these frames correct?"""

    def answer_correct(self, item: Any, chosen_indices: torch.Tensor) -> bool | float:
        """Answer ``item``'s question from the candidates ``chosen_indices`` (sorted by time); True if correct.

        An answerer that knows its probability of answering correctly (a simulator, or an MLLM's probability of the
        gold letter) may return it as a float in [0, 1] instead: the trainer then uses the expected advantage
        (:func:`~msjoe.rl.rewards.difficulty_advantage`), which has the coin flip's mean without its noise.

        An answerer may also have ``answer_many(requests) -> list`` over ``(item, chosen_indices)`` pairs, the same
        verdicts in order: the trainer then asks for a whole step's draws at once, so the answerer can batch them.
        """
        ...


@dataclass
class Stage1Config(ScheduledConfig):
    """Hyper-parameters of stage-1 sampler training (saved with checkpoints; see :meth:`to_dict`).

    The defaults are the recipe measured with ``bench/bench_simulator.py``; the runs that chose them (including the
    settings that diverged) are in bench/RESULTS.md.
    """

    learning_rate: Annotated[float, POSITIVE] = 1e-3
    """AdamW peak learning rate."""
    weight_decay: Annotated[float, AT_LEAST_0] = 0.0
    """AdamW weight decay."""
    lr_schedule: LRSchedule = "cosine"
    """``"constant"`` or ``"cosine"`` (decay to ``min_lr_ratio`` of the peak over ``steps``); both after warmup.
    Cosine, because the runs that diverged did so in the second half at a constant rate (bench/RESULTS.md)."""
    warmup_steps: Annotated[int, AT_LEAST_0] = 20
    """Linear warmup from 0 to ``learning_rate`` over this many steps."""
    min_lr_ratio: Annotated[float, Bounds(0, 1)] = 0.1
    """Final learning rate of the cosine schedule as a fraction of ``learning_rate``."""
    entropy_coef: Annotated[float, AT_LEAST_0] = 0.0
    """Weight of an entropy bonus ``-entropy_coef * mean H(p)`` (nats) in the loss; 0 (default) is the paper's
    loss. It resists the collapse of ``p`` onto a few frames."""
    steps: Annotated[int, AT_LEAST_0] = 600
    """Optimiser steps :meth:`Stage1Trainer.train` runs (also the length of the cosine schedule)."""
    k: Annotated[int, AT_LEAST_1] = 16
    """Frames drawn per rollout (the training budget; the items' difficulty should refer to it)."""
    batch_size: Annotated[int, AT_LEAST_1] = 8
    """Items per optimiser step and process (the global batch is ``batch_size`` x the number of processes)."""
    samples_per_item: Annotated[int, AT_LEAST_1] = 8
    """Draws of K frames per item, sharing one forward pass (G). The paper's form is 1. More draws cost little
    (one forward and backward pass per item whatever G) and give the group baseline a better mean."""
    baseline: Baseline = "group_mean"
    """``"none"`` (paper): the advantage is the difficulty-aware reward. ``"group_mean"``: minus the mean of the
    item's G advantages (needs ``samples_per_item >= 2``)."""
    estimator: Estimator = "plackett_luce"
    """``log P(selected frames)``: ``"plackett_luce"`` (exact for draws without replacement) or ``"independent"``
    (the paper's ``sum_k log p(x_k)``)."""
    advantage_clip: Annotated[float, POSITIVE] = 10.0
    """``|A|`` bound of the difficulty-aware advantage (paper: A = 10 for c = 0)."""
    answer_reward: AnswerReward = "correct"
    """What ``msjoe train stage1`` asks the frozen MLLM: ``"correct"`` (paper): is its greedy answer from the drawn
    frames the gold letter (1/0)? ``"gold_probability"``: its probability of starting the reply with the gold letter,
    renormalised over the option letters (one forward pass, no decoding), used as an expected reward: the mean
    reward of answers sampled at temperature 1 that start with their letter, smooth where the greedy 0/1 jumps. (An
    expected reward beat a sampled one by about +0.015 recall on the simulators, bench/RESULTS.md "Simulator
    family"; on real MLLMs it is unmeasured.) Needs a backend that reads next-token probabilities: transformers, or
    an OpenAI-compatible server that returns ``top_logprobs`` (vLLM, SGLang)."""
    answer_batch_size: Annotated[int, AT_LEAST_1] = 8
    """Answers the frozen MLLM gives in one call (a step's uncached draws are asked together: one left-padded forward
    pass for ``gold_probability``, ``chat_many`` for ``correct``). Memory: one prefill of this many answer turns."""
    max_grad_norm: Annotated[float | None, POSITIVE] = 20.0
    """Clip the global gradient norm to this (None: no clipping). A safety net against rare large steps, not a
    normaliser: stage-1 gradient norms sit at 2-6 on the simulator, so a bound of 1 clipped every step (it scored the
    same on the validation variants; docs/decisions.md, "One policy")."""
    seed: Annotated[int, AT_LEAST_0] = 0
    """Seeds the draws of frames (the trainer's own generator; the global RNG is not used)."""
    log_interval: Annotated[int, AT_LEAST_0] = 10
    """Log the running means of the step statistics every this many steps; 0 disables logging."""

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation
        if self.baseline == "group_mean" and self.samples_per_item < 2:
            raise ValueError("baseline='group_mean' needs samples_per_item >= 2 (a group of one has zero advantage)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stage1StepStats:
    """What one optimiser step saw (plain floats, detached)."""

    step: int
    """The step number after this update (1 for the first)."""
    loss: float
    accuracy: float
    """Fraction of this step's rollouts answered correctly (the mean probability of a correct answer when the
    answerer returns probabilities)."""
    mean_advantage: float
    """Mean difficulty-aware advantage before any baseline (> 0 on average means better than uniform)."""
    advantage_abs_mean: float
    """Mean ``|A|`` of the advantages the loss uses (after the baseline): 0 means no learning signal this step."""
    mean_difficulty: float
    grad_norm: float
    """Global gradient norm before clipping."""
    entropy: float
    """Mean entropy (nats) of the sampler's distribution over candidates (``log T`` when uniform)."""
    learning_rate: float
    """Learning rate of the next update."""
    seconds: float
    frame_positions: tuple[float, ...] = ()
    """This process's drawn frames as fractions of their video, ``(index + 0.5) / T`` (for histograms)."""


class Stage1Trainer(TrainerBase):
    """REINFORCE over a frozen answerer: draw K frames per rollout, ask the answerer, update the sampler.

    ``trainer.train(items)`` runs ``config.steps`` steps over an iterable of :class:`Stage1Item` (an endless
    stream is fine: exactly ``steps * batch_size`` items are consumed); ``trainer.step(batch)`` does one update
    on a given batch, for callers that drive the loop themselves. The sampler's :attr:`~USampler.training_steps`
    counts the updates, so a :meth:`~USampler.save_pretrained` afterwards is marked trained.
    """

    def __init__(
        self,
        sampler: USampler,
        answerer: Answerer,
        config: Stage1Config | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        if not isinstance(answerer, Answerer):
            raise TypeError(f"answerer must have an answer_correct(item, chosen_indices) method, got {answerer!r}")
        self.sampler = sampler
        self.answerer = answerer
        self.config = config or Stage1Config()
        self.optimizer = torch.optim.AdamW(
            sampler.module.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        # Not prepared by accelerate: its scheduler wrapper would step num_processes times per update.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.config.lr_factor)
        self.accelerator = accelerator
        # ``model`` runs the forward pass: the network itself, or its DDP wrapper under accelerate.
        self.model: torch.nn.Module = sampler.module
        rank = 0
        if accelerator is not None:
            self.model, self.optimizer = accelerator.prepare(sampler.module, self.optimizer)
            rank = accelerator.process_index
        # Draws come from the trainer's own generator (on the sampler's device), never from the global RNG; each
        # process draws differently.
        self.generator = torch.Generator(device=sampler.device).manual_seed(derive_seed(self.config.seed, rank))
        self.step_count = 0
        self.last_item_ids: list[str | None] = []
        """Ids of the items of the last step on this process (for logging and tests)."""

    def step(self, items: Sequence[Stage1Item]) -> Stage1StepStats:
        """One optimiser step on ``items``: ``samples_per_item`` rollouts each, one batched forward and backward.

        Under ``accelerate`` each process passes its own items; gradients are averaged across processes and the
        returned statistics are the means over all processes. Raises :class:`~msjoe.errors.NonFiniteLossError`
        (without stepping) if the loss or the gradient norm is NaN or infinite.
        """
        if not items:
            raise ValueError("a stage-1 step needs at least one item")
        config = self.config
        started = time.perf_counter()
        self.model.train()
        # One forward pass for the whole batch (a DDP module must see one forward per backward).
        all_logits = self.sampler.logits_batch([item.sim for item in items], module=self.model)
        # Every draw first, then all the answers in one call (an answerer may batch them: answer_many).
        orders = [
            [
                self.sampler.draw(logits.detach(), config.k, generator=self.generator)
                for _ in range(config.samples_per_item)
            ]
            for logits in all_logits
        ]
        requests = [
            (item, torch.sort(order).values) for item, group in zip(items, orders, strict=True) for order in group
        ]
        correct = [_correctness(outcome) for outcome in _answer_all(self.answerer, requests)]
        positions = [
            (float(index) + 0.5) / logits.shape[-1]
            for logits, group in zip(all_logits, orders, strict=True)
            for order in group
            for index in torch.sort(order).values.tolist()
        ]
        log_probs, advantages, raw_advantages, entropies = [], [], [], []
        for number, (item, logits) in enumerate(zip(items, all_logits, strict=True)):
            log_p = torch.log_softmax(logits, dim=-1)
            entropies.append(-(log_p.exp() * log_p).sum())
            hits = correct[number * config.samples_per_item : (number + 1) * config.samples_per_item]
            group = torch.stack(
                [difficulty_advantage(hit, float(item.difficulty), clip=config.advantage_clip) for hit in hits]
            ).float()
            raw_advantages.append(group)
            advantages.append(group - group.mean() if config.baseline == "group_mean" else group)
            log_probs += [self.sampler.sequence_log_prob(logits, order, config.estimator) for order in orders[number]]
        entropy = torch.stack(entropies).mean()
        loss = reinforce_loss(torch.stack(log_probs), torch.cat(advantages).to(self.sampler.device))
        if config.entropy_coef:
            loss = loss - config.entropy_coef * entropy

        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss)
        grad_norm = self._clip(self.model, config.max_grad_norm)
        raw = torch.cat(raw_advantages)
        mean_item_difficulty = sum(float(item.difficulty) for item in items) / len(items)
        local = torch.tensor(
            [
                float(loss.detach()),
                sum(correct) / len(correct),
                float(raw.mean()),
                float(entropy.detach()),
                float(torch.cat(advantages).abs().mean()),  # after the baseline: what the loss multiplies
                mean_item_difficulty,
            ],
            dtype=torch.float64,
        )
        loss_value, accuracy, mean_advantage, mean_entropy, advantage_abs_mean, mean_difficulty = (
            self._mean_over_processes(local)
        )
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"stage-1 step {self.step_count + 1}: loss {loss_value}, gradient norm {grad_norm}; not stepped",
                step=self.step_count + 1,
                batch={
                    "item_ids": [getattr(item, "id", None) for item in items],
                    "sims": [item.sim.detach().cpu() for item in items],
                    "difficulties": [float(item.difficulty) for item in items],
                    "logits": [logits.detach().cpu() for logits in all_logits],
                    "loss": loss_value,
                    "grad_norm": grad_norm,
                },
            )
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.sampler.training_steps += 1
        self.last_item_ids = [getattr(item, "id", None) for item in items]
        return Stage1StepStats(
            step=self.step_count,
            loss=loss_value,
            accuracy=accuracy,
            mean_advantage=mean_advantage,
            advantage_abs_mean=advantage_abs_mean,
            mean_difficulty=mean_difficulty,
            grad_norm=grad_norm,
            entropy=mean_entropy,
            learning_rate=self.scheduler.get_last_lr()[0],
            seconds=time.perf_counter() - started,
            frame_positions=tuple(positions),
        )

    def train(
        self, items: Iterable[Stage1Item], callback: Callable[[Stage1StepStats], None] | None = None
    ) -> list[Stage1StepStats]:
        """Run ``config.steps`` steps over ``items`` (batches of ``config.batch_size``); return every step's stats.

        Stops early, with a warning, if ``items`` runs out. ``callback`` gets each step's stats (e.g. to evaluate
        or checkpoint every N steps). Running means are logged every ``config.log_interval`` steps.
        """
        history: list[Stage1StepStats] = []
        iterator = iter(items)
        for _ in range(self.config.steps):
            batch = _take(iterator, self.config.batch_size)
            if not batch:
                logger.warning("stage 1: items ran out after %d steps", self.step_count)
                break
            stats = self.step(batch)
            history.append(stats)
            if callback is not None:
                callback(stats)
            interval = self.config.log_interval
            if interval and stats.step % interval == 0:
                recent = history[-interval:]
                logger.info(
                    "stage 1 step %d: loss %.4f, rollout accuracy %.3f, mean advantage %+.3f, grad norm %.3f, "
                    "%.2f s/step",
                    stats.step,
                    _mean(s.loss for s in recent),
                    _mean(s.accuracy for s in recent),
                    _mean(s.mean_advantage for s in recent),
                    _mean(s.grad_norm for s in recent),
                    _mean(s.seconds for s in recent),
                )
        return history

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, sampling RNG and step count; with the sampler's weights this resumes a run exactly."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step_count,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (load the sampler's weights separately, e.g. with ``from_pretrained``)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])


def _answer_all(answerer: Answerer, requests: list[tuple[Any, torch.Tensor]]) -> list[bool | float]:
    """The answerer's verdicts on ``(item, chosen frames)`` pairs, in order: one ``answer_many`` call when the
    answerer has one (it may batch the model's work), else one ``answer_correct`` call each."""
    many = getattr(answerer, "answer_many", None)
    if callable(many):
        verdicts = list(many(requests))
        if len(verdicts) != len(requests):
            raise ValueError(f"answer_many returned {len(verdicts)} verdicts for {len(requests)} requests")
        return verdicts
    return [answerer.answer_correct(item, chosen) for item, chosen in requests]


def _correctness(outcome: object) -> float:
    """An answerer's verdict as a float in [0, 1]: 1/0 for a bool, the probability itself for a number."""
    value = float(outcome)  # type: ignore[arg-type]
    if not 0 <= value <= 1:
        raise ValueError(f"the answerer returned {outcome!r}; expected a bool or a probability in [0, 1]")
    return value


def _take(iterator: Iterator[Stage1Item], count: int) -> list[Stage1Item]:
    batch = []
    for item in iterator:
        batch.append(item)
        if len(batch) == count:
            break
    return batch


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
