"""``msjoe train``: a training run from a config, on one process or many (``accelerate launch``).

The run is the same for both stages::

    config -> models -> examples (features cached, bad items skipped) -> resume? -> steps -> checkpoints -> export

Each process takes its own slice of every global batch (:func:`batch_indices`: a seeded permutation per epoch, so
the data position is a pure function of the step and a resumed run sees exactly the batches it would have seen);
gradients are averaged by the distributed engine accelerate sets up (DDP / FSDP / DeepSpeed, from
``accelerate config`` or ``accelerate launch`` flags). A NaN or infinite loss stops the run with the batch saved
under ``bad_batches/``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msjoe.atomic import write_text_atomically
from msjoe.errors import MsjoeError, NonFiniteLossError
from msjoe.progress import progress_bar
from msjoe.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_info,
    register_peft_hooks,
    save_checkpoint,
)
from msjoe.train.config import Stage1RunConfig, dump_run_config
from msjoe.train.examples import TrainExample
from msjoe.train.metrics import MetricsLogger

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.jsonl"
BAD_BATCH_DIR = "bad_batches"
SAMPLER_EXPORT = "sampler"
QUERY_CACHE = "query_cache.jsonl"


@dataclass
class RunSummary:
    """What a run did (returned by :func:`train_stage1` / :func:`train_stage2`, printed by the CLI)."""

    output_dir: Path
    steps_done: int
    resumed_from: Path | None
    examples: int
    skipped: int
    last_metrics: dict[str, float]
    exported: dict[str, Path]


def batch_indices(step: int, rank: int, world_size: int, batch_size: int, num_examples: int, seed: int) -> list[int]:
    """Example indices process ``rank`` trains on at update ``step`` (0-based).

    The global stream is the concatenation of per-epoch permutations of ``range(num_examples)`` (epoch ``e``
    shuffled with ``seed + e``); update ``step`` consumes ``world_size * batch_size`` consecutive positions and
    process ``rank`` takes its ``batch_size`` of them. Pure: resuming at a step needs no saved data position.
    """
    if num_examples < 1:
        raise ValueError("no training examples")
    start = (step * world_size + rank) * batch_size
    indices, cached_epoch, order = [], -1, []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_examples)
        if epoch != cached_epoch:
            order = list(range(num_examples))
            random.Random(seed + epoch).shuffle(order)
            cached_epoch = epoch
        indices.append(order[offset])
    return indices


def make_accelerator(mixed_precision: str = "no") -> Any:
    """An ``accelerate.Accelerator`` (settings from ``accelerate launch`` / ``accelerate config`` win)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        # Without this check each process would train alone and all would write the same checkpoints.
        raise MsjoeError(
            f"launched as {launched} processes but accelerate set up a single one (no GPU?): on CPU run "
            "`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m msjoe train ...`"
        )
    register_peft_hooks(accelerator)
    return accelerator


def resolve_resume(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint to continue from, per ``RunConfig.resume`` (``auto`` / ``never`` / a folder)."""
    if resume == "never":
        existing = latest_checkpoint(output_dir)
        if existing is not None:
            raise CheckpointError(
                f"{output_dir} already holds checkpoints (newest {existing.name}) and run.resume is 'never': "
                "choose another run.output_dir, delete it, or set run.resume: auto"
            )
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    folder = Path(resume)
    read_checkpoint_info(folder)  # raises if it is not a complete checkpoint
    return folder


def train_stage1(
    config: Stage1RunConfig,
    *,
    accelerator: Any = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> RunSummary:
    """Stage 1: train the U-Sampler against the frozen MLLM (DESIGN.md §4) on ``config.data.train``.

    ``on_step(step, trainer)`` is called on every process after every update (to inspect or interrupt a run).
    """
    from msjoe.cache import FeatureCache
    from msjoe.data.schema import read_qa_jsonl
    from msjoe.features import DualEncoder
    from msjoe.frame_store import FrameStore
    from msjoe.mllm import get_backend
    from msjoe.rl.stage1 import Stage1Trainer
    from msjoe.samplers.usampler import USampler, USamplerConfig
    from msjoe.train.answerer import MLLMAnswerer
    from msjoe.train.data import QueryWriter, prepare_examples

    if not config.data.train:
        raise MsjoeError("data.train is required: the training QA JSONL (see `msjoe smoke-data` for an example)")
    accelerator = accelerator or make_accelerator(config.run.mixed_precision)
    output_dir = Path(config.run.output_dir)
    resume_from = resolve_resume(output_dir, config.run.resume)
    device = str(accelerator.device)
    is_main = accelerator.is_main_process
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / "config.yaml", dump_run_config(config))

    models, data = config.models, config.data
    encoder = DualEncoder.from_pretrained(models.dual_encoder, revision=models.dual_encoder_revision, device=device)
    mllm = get_backend(
        "transformers", model=models.mllm, device=device, dtype=models.dtype, revision=models.mllm_revision
    )
    if models.sampler is not None:
        sampler = USampler(checkpoint=models.sampler, device=device)
    else:
        sampler = USampler(
            config=USamplerConfig.from_dict(models.sampler_config), device=device, seed=models.sampler_seed
        )

    cache = FeatureCache(data.cache_dir)
    store = FrameStore.for_cache(cache, data.frame_max_pixels) if data.frame_store else None
    items = read_qa_jsonl(data.train, video_root=data.video_root)
    if data.limit is not None:
        items = items[: data.limit]
    # The main process indexes first (filling the shared cache); the others then read their features from it.
    with accelerator.main_process_first():
        queries = (
            "question"
            if data.queries == "question"
            else QueryWriter(mllm, k=config.trainer.k, cache_path=output_dir / QUERY_CACHE)
        )
        prepared = prepare_examples(
            items,
            encoder=encoder,
            cache=cache,
            fps=data.fps,
            max_frames=data.max_frames,
            queries=queries,
            frame_store=store,
            require_difficulty=True,
            min_frames=config.trainer.k,  # fewer candidates than K leave nothing to choose
            progress=config.run.progress and is_main,
        )
    examples: list[TrainExample] = prepared.examples
    if is_main:
        _write_skipped(output_dir / SKIPPED_FILE, prepared.skipped)
    if not examples:
        raise MsjoeError(
            f"no usable training items in {data.train} ({len(prepared.skipped)} skipped: see {SKIPPED_FILE})"
        )

    answerer = MLLMAnswerer(
        mllm,
        frame_max_pixels=data.frame_max_pixels,
        frame_store=store,
        # One answer cache per process: appends from several processes to one file would interleave.
        cache_path=output_dir / "answer_cache" / f"rank{accelerator.process_index}.jsonl",
    )
    trainer = Stage1Trainer(sampler, answerer, config.trainer, accelerator=accelerator)

    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        trainer.load_state_dict(state)
        answerer.load_state_dict(state["answerer"])
        sampler.training_steps = trainer.step_count
        logger.info("resumed from %s at step %d", resume_from, trainer.step_count)

    steps = config.trainer.steps
    last: dict[str, float] = {}
    metrics = MetricsLogger(
        output_dir, enabled=is_main, tensorboard=config.run.tensorboard, resume_step=trainer.step_count
    )
    with metrics, progress_bar(enabled=config.run.progress and is_main) as bar:
        task = bar.add_task("stage 1", total=steps, completed=trainer.step_count)
        while trainer.step_count < steps:
            step = trainer.step_count
            indices = batch_indices(
                step,
                accelerator.process_index,
                accelerator.num_processes,
                config.trainer.batch_size,
                len(examples),
                config.trainer.seed,
            )
            batch = [examples[i] for i in indices]
            try:
                stats = trainer.step(batch)
            except NonFiniteLossError as error:
                _save_bad_batch(output_dir, accelerator.process_index, error)
                raise
            last = _scalars(stats)
            metrics.log(stats.step, last, {"frame_position": list(stats.frame_positions)})
            bar.update(task, completed=stats.step, description=f"stage 1 · acc {stats.accuracy:.2f}")
            if config.run.save_every and stats.step % config.run.save_every == 0 and stats.step < steps:
                save_checkpoint(
                    accelerator,
                    output_dir,
                    stats.step,
                    {**trainer.state_dict(), "answerer": answerer.state_dict()},
                    keep_last=config.run.keep_last,
                    exports={SAMPLER_EXPORT: sampler},
                )
            if on_step is not None:
                on_step(stats.step, trainer)

    final = save_checkpoint(
        accelerator,
        output_dir,
        trainer.step_count,
        {**trainer.state_dict(), "answerer": answerer.state_dict()},
        keep_last=config.run.keep_last,
        exports={SAMPLER_EXPORT: sampler},
    )
    exported = {}
    if is_main:
        exported[SAMPLER_EXPORT] = sampler.save_pretrained(output_dir / SAMPLER_EXPORT)
    accelerator.wait_for_everyone()
    logger.info("stage 1 done: %d steps, last checkpoint %s", trainer.step_count, final)
    return RunSummary(
        output_dir=output_dir,
        steps_done=trainer.step_count,
        resumed_from=resume_from,
        examples=len(examples),
        skipped=len(prepared.skipped),
        last_metrics=last,
        exported=exported,
    )


def _scalars(stats: Any) -> dict[str, float]:
    """The numeric fields of a step's statistics, except the step number."""
    return {
        key: float(value)
        for key, value in vars(stats).items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
    }


def _write_skipped(path: Path, skipped: list[Any]) -> None:
    lines = [json.dumps({"id": s.id, "video": str(s.video), "reason": s.reason}) for s in skipped]
    write_text_atomically(path, "".join(line + "\n" for line in lines))
    if skipped:
        logger.warning("%d training item(s) skipped, reasons in %s", len(skipped), path)


def _save_bad_batch(output_dir: Path, rank: int, error: NonFiniteLossError) -> Path:
    folder = output_dir / BAD_BATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{error.step:08d}-rank{rank}.pt"
    torch.save({"message": str(error), "step": error.step, "batch": error.batch}, path)
    logger.error("%s; the batch is saved in %s", error, path)
    return path
