"""Stage-1 training of the U-Sampler on a simulator (``msjoe sim train``).

The loop is :class:`msjoe.train.stage1.Stage1Trainer` unchanged; this module feeds it protocol items
(:mod:`msjoe.sim.protocol`) and makes the run resumable: every ``save_every`` steps the sampler is saved to the
output folder (a normal U-Sampler checkpoint) with the trainer's state beside it, and a rerun into the same folder
continues from there, skipping the items already consumed (items are a pure function of their seed).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from msjoe.atomic import write_bytes_atomically, write_text_atomically
from msjoe.progress import progress_bar
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.sim.protocol import ProtocolAnswerer, Simulator, TrainingItem, check_item, item_difficulty
from msjoe.train.stage1 import Stage1Config, Stage1StepStats, Stage1Trainer

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
LOG_FILE = "training_log.jsonl"
RUN_FILE = "sim_run.json"


def train_on_simulator(
    simulator: Simulator,
    out: str | Path,
    *,
    config: Stage1Config | None = None,
    sampler_config: USamplerConfig | None = None,
    items_seed: int = 0,
    reward: str = "expected",
    save_every: int = 100,
    progress: bool = True,
    description: str = "",
) -> USampler:
    """Train a fresh U-Sampler (seeded by ``config.seed``) on ``simulator.items(steps · batch, items_seed)``.

    Writes the checkpoint, ``training_log.jsonl`` (one line per step) and ``sim_run.json`` (what was run) into
    ``out``. A rerun with the same arguments resumes; different arguments into a folder holding a run are an error.
    """
    config = config or Stage1Config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "simulator": description or _describe(simulator),
        "items_seed": items_seed,
        "reward": reward,
        "stage1": config.to_dict(),
        "sampler": (sampler_config or USamplerConfig()).to_dict(),
    }
    resuming = (out / STATE_FILE).is_file()
    if resuming:
        previous = json.loads((out / RUN_FILE).read_text())
        if previous != run:
            changed = sorted(key for key in run if previous.get(key) != run[key])
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); choose another --out")
        sampler = USampler.from_pretrained(out)
    else:
        sampler = USampler(config=sampler_config, seed=config.seed)
    answerer = ProtocolAnswerer(reward=reward, seed=config.seed)
    trainer = Stage1Trainer(sampler, answerer, config)
    if resuming:
        state = torch.load(out / STATE_FILE, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        answerer.generator.set_state(state["answerer_generator"])
        logger.info("resuming %s at step %d of %d", out, trainer.step_count, config.steps)
        _truncate_log(out / LOG_FILE, trainer.step_count)
    else:
        write_text_atomically(out / RUN_FILE, json.dumps(run, indent=2) + "\n")
        (out / LOG_FILE).unlink(missing_ok=True)

    total_items = config.steps * config.batch_size
    done = trainer.step_count * config.batch_size
    stream = _stream(simulator, total_items, items_seed, config.k, skip=done)
    pending: list[Stage1StepStats] = []
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(
            f"stage 1 on {description or 'simulator'}", total=config.steps, completed=trainer.step_count
        )
        while trainer.step_count < config.steps:
            batch = list(itertools.islice(stream, config.batch_size))
            if not batch:
                raise ValueError(f"the simulator ran out of items after {trainer.step_count} steps")
            pending.append(trainer.step(batch))
            bar.update(task, completed=trainer.step_count)
            if trainer.step_count % save_every == 0 or trainer.step_count == config.steps:
                _save(out, sampler, trainer, answerer, pending)
                pending = []
    return sampler


def _stream(simulator: Simulator, count: int, seed: int, k: int, *, skip: int) -> Iterator[TrainingItem]:
    for index, item in enumerate(simulator.items(count, seed)):
        if index < skip:
            continue
        check_item(item, index)
        yield TrainingItem(item, item_difficulty(item, k, seed=index), f"seed{seed}-{index}")


def _save(
    out: Path, sampler: USampler, trainer: Stage1Trainer, answerer: ProtocolAnswerer, steps: list[Stage1StepStats]
) -> None:
    # Log lines first, then weights, then the state that marks them done: a crash in between repeats a few steps
    # of logging at worst, never loses or mixes weights.
    with (out / LOG_FILE).open("a") as log:
        for stats in steps:
            record: dict[str, Any] = asdict(stats)
            record.pop("frame_positions")
            log.write(json.dumps(record) + "\n")
    sampler.save_pretrained(out)
    buffer = _to_bytes({"trainer": trainer.state_dict(), "answerer_generator": answerer.generator.get_state()})
    write_bytes_atomically(out / STATE_FILE, buffer)


def _describe(simulator: Simulator) -> str:
    """A stable name: the object's own repr when its class defines one, else its type (never a memory address)."""
    if type(simulator).__repr__ is not object.__repr__:
        return repr(simulator)
    return f"{type(simulator).__module__}.{type(simulator).__qualname__}"


def _truncate_log(path: Path, steps: int) -> None:
    """Drop log lines of steps after the saved state (logged just before a crash, about to be redone)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= steps]
        write_text_atomically(path, "".join(line + "\n" for line in lines))


def _to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
