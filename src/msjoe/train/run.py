"""``msjoe train``: a training run from a config, on one process or many (``accelerate launch``).

The run is the same for both stages::

    config -> models -> examples (features cached, bad items skipped) -> resume? -> steps -> checkpoints -> export

Each process takes its own slice of every global batch (:func:`batch_indices`: a seeded permutation per epoch, so
the data position is a pure function of the step and a resumed run sees exactly the batches it would have seen);
gradients are averaged by DDP (``accelerate launch --multi_gpu``); FSDP, DeepSpeed and Megatron set-ups are
refused before any model loads. A NaN or infinite loss stops the run with the batch saved under ``bad_batches/``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msjoe.atomic import apply_umask_to_files, write_text_atomically
from msjoe.distributed import all_results, check_launch, collective_timeout, my_share, on_every_process
from msjoe.errors import MsjoeError, NonFiniteLossError
from msjoe.progress import progress_bar
from msjoe.train.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_problem,
    latest_checkpoint,
    load_checkpoint,
    newest_intact_checkpoint,
    register_peft_hooks,
    save_checkpoint,
    set_aside_newer_checkpoints,
)
from msjoe.train.config import Stage1RunConfig, dump_run_config
from msjoe.train.examples import TrainExample
from msjoe.train.metrics import MetricsLogger

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.jsonl"
BAD_BATCH_DIR = "bad_batches"
SAMPLER_EXPORT = "sampler"
QUERY_CACHE = "query_cache.jsonl"
QUERY_CACHE_SHARDS = "query_cache"  # query_cache/rank{R}.jsonl: the caches of a multi-process run
MLLM_EXPORT = "mllm"
MLLM_ADAPTER_EXPORT = "mllm_adapter"


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
    shuffled by a generator seeded with the pair ``(seed, e)``); update ``step`` consumes
    ``world_size * batch_size`` consecutive positions and process ``rank`` takes its ``batch_size`` of them.
    Pure: resuming at a step needs no saved data position.
    """
    if num_examples < 1:
        raise ValueError("no training examples")
    start = (step * world_size + rank) * batch_size
    indices, cached_epoch, order = [], -1, []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_examples)
        if epoch != cached_epoch:
            order = list(range(num_examples))
            random.Random(f"msjoe-data-order:{seed}:{epoch}").shuffle(order)  # (seed, epoch) pairs never collide
            cached_epoch = epoch
        indices.append(order[offset])
    return indices


def make_accelerator(mixed_precision: str | None = None) -> Any:
    """An ``accelerate.Accelerator``; ``mixed_precision`` None takes ``accelerate launch`` / ``accelerate config``'s
    setting (``"no"`` when there is none)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # A long collective timeout: the processes' shares of the data preparation can finish hours apart.
    timeout = InitProcessGroupKwargs(timeout=collective_timeout())
    accelerator = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=[timeout])
    check_launch(accelerator)  # else each process would train alone and all would write the same checkpoints
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
    if resume == "auto":  # the newest intact checkpoint; damaged newer ones are moved aside
        found, damaged = newest_intact_checkpoint(output_dir)
        if found is None and damaged:
            listed = "; ".join(f"{path.name}: {problem}" for path, problem in damaged)
            raise CheckpointError(
                f"every checkpoint of {output_dir} is damaged ({listed}); they were moved to "
                f"{damaged[0][0].parent}, not deleted. Rerun to start again from step 0, or move an intact checkpoint "
                f"back into {output_dir / CHECKPOINT_DIR}"
            )
        return found
    folder = Path(resume)
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"run.resume: {folder} cannot be resumed from: {problem}")
    return folder


@dataclass
class _RunContext:
    """What both stages share once a run has started."""

    config: Any
    accelerator: Any
    output_dir: Path
    resume_from: Path | None

    @property
    def device(self) -> str:
        return str(self.accelerator.device)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def _start(config: Any, accelerator: Any) -> _RunContext:
    if not config.data.train:
        raise MsjoeError("data.train is required: the training QA JSONL (see `msjoe smoke-data` for an example)")
    accelerator = accelerator or make_accelerator(config.run.mixed_precision)
    _check_engine(accelerator)
    output_dir = Path(config.run.output_dir)
    # The main process decides where to resume from and tells the others: a shared file system seen with a delay
    # on another node must not give processes different starting steps.
    decision: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            if not Path(config.data.train).is_file():  # before minutes of loading models; every process raises it
                raise MsjoeError(f"data.train: the training QA JSONL {config.data.train} does not exist")
            found = resolve_resume(output_dir, config.run.resume)
            decision = [str(found) if found is not None else ""]
            if found is not None:
                set_aside_newer_checkpoints(output_dir, found)
        except MsjoeError as error:  # a CheckpointError too
            decision = [error]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    if isinstance(decision[0], Exception):
        raise decision[0]
    run = _RunContext(config, accelerator, output_dir, Path(decision[0]) if decision[0] else None)
    if run.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / "config.yaml", dump_run_config(config))
    return run


def _check_engine(accelerator: Any) -> None:
    """Refuse set-ups the trainers do not implement, before any model is loaded."""
    from accelerate.utils import DistributedType

    unsupported = {DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM}
    if accelerator.distributed_type in unsupported:
        raise MsjoeError(
            f"accelerate is set up for {accelerator.distributed_type.value}, which msjoe's trainers do not support "
            "(stage 2 generates with the unwrapped model; stage 1 trains a 2M-parameter network): use DDP "
            "(`accelerate launch --multi_gpu ...`)"
        )
    if accelerator.mixed_precision == "fp16":
        # A loss-scaler overflow would read as a non-finite loss (and stop the run); stage 2's two optimisers
        # cannot share one scaler. bf16 needs no scaler.
        raise MsjoeError("fp16 mixed precision is not supported: use bf16 (run.mixed_precision: bf16)")
    if accelerator.gradient_accumulation_steps != 1:
        raise MsjoeError(
            "accelerate's gradient_accumulation_steps must be 1 (the trainers accumulate over rollouts themselves); "
            "raise trainer.batch_size instead"
        )


def _load_models(run: _RunContext) -> tuple[Any, Any, Any]:
    """The frozen dual encoder, the MLLM and the U-Sampler, on this process's device."""
    from msjoe.features import DualEncoder
    from msjoe.mllm import get_backend
    from msjoe.samplers.usampler import USampler, USamplerConfig

    models = run.config.models
    encoder = DualEncoder.from_pretrained(models.dual_encoder, revision=models.dual_encoder_revision, device=run.device)
    mllm = get_backend(
        "transformers", model=models.mllm, device=run.device, dtype=models.dtype, revision=models.mllm_revision
    )
    if models.sampler is not None:
        sampler = USampler(checkpoint=models.sampler, device=run.device)
    else:
        sampler_config = USamplerConfig.from_dict(models.sampler_config)
        sampler = USampler(config=sampler_config, device=run.device, seed=models.sampler_seed)
    return encoder, mllm, sampler


def _prepare(
    run: _RunContext, encoder: Any, *, queries: Any, require_difficulty: bool
) -> tuple[list[TrainExample], Any, Any]:
    """Read the QA file, index the videos and write the stage-1 queries (with several processes, each its share
    first, into the shared caches), skip bad items.

    Returns the examples, the :class:`~msjoe.train.data.PreparedData` and the frame store (or None)."""
    from msjoe.cache import FeatureCache
    from msjoe.data.schema import read_qa_jsonl
    from msjoe.frame_store import FrameStore
    from msjoe.train.data import prepare_examples

    data = run.config.data
    cache = FeatureCache(data.cache_dir)
    # Stage 2 shows answer frames at trainer.frame_max_pixels: store frames large enough for both settings.
    store_pixels = max(data.frame_max_pixels, getattr(run.config.trainer, "frame_max_pixels", 0))
    store = FrameStore.for_cache(cache, max_pixels=store_pixels) if data.frame_store else None
    items = on_every_process(
        run.accelerator,
        lambda: read_qa_jsonl(data.train, video_root=data.video_root),
        what=f"reading the training data {data.train}",
    )
    if data.limit is not None:
        items = items[: data.limit]

    def prepare(share: list[Any], progress: bool) -> Any:
        return prepare_examples(
            share,
            encoder=encoder,
            cache=cache,
            fps=data.fps,
            max_frames=data.max_frames,
            queries=queries() if callable(queries) else queries,
            frame_store=store,
            require_difficulty=require_difficulty,
            min_frames=run.config.trainer.k,  # fewer candidates than K leave nothing to choose
            progress=progress,
        )

    accelerator = run.accelerator
    skipped_before: list[Any] = []
    if accelerator.num_processes > 1:
        # Each process first does the expensive part — indexing and the frozen MLLM's queries — for the items of
        # its share of the videos, into the shared caches; afterwards every process prepares all items from the caches,
        # except those some process already had to skip (a corrupt video is not decoded again by everyone).
        share = my_share(accelerator, items, lambda item: item.video_key)
        first = on_every_process(
            accelerator,
            lambda: prepare(share, progress=run.config.run.progress and run.is_main),
            what="preparing the training data",
        )
        skipped_before = [entry for skipped in all_results(accelerator, first.skipped) for entry in skipped]
        skipped_ids = {entry.id for entry in skipped_before}
        items = [item for item in items if item.id not in skipped_ids]
    prepared = on_every_process(
        accelerator,
        lambda: prepare(items, progress=run.config.run.progress and run.is_main and accelerator.num_processes == 1),
        what="preparing the training data",
    )
    prepared.skipped = skipped_before + prepared.skipped
    if accelerator.num_processes > 1:
        # Every process must hold the same examples in the same order, or the data slices silently misalign. All
        # processes compare all lists, so all stop together (one stopping alone would leave the others at DDP's
        # first collective).
        ids = all_results(accelerator, [example.id for example in prepared.examples])
        differing = [rank for rank, other in enumerate(ids) if other != ids[0]]
        if differing:
            raise MsjoeError(
                f"process {differing[0]} prepared different training items than the main process (a video readable "
                "on one machine but not another?): check skipped.jsonl and the file systems"
            )
    if run.is_main:
        _write_skipped(run.output_dir / SKIPPED_FILE, prepared.skipped)
    if not prepared.examples:
        raise MsjoeError(
            f"no usable training items in {data.train} ({len(prepared.skipped)} skipped: see {SKIPPED_FILE})"
        )
    return prepared.examples, prepared, store


def _load_resume_state(run: _RunContext) -> dict[str, Any]:
    """Load ``run.resume_from`` into the prepared models and optimisers on every process; this process's trainer
    state. A process that cannot load it stops all of them (the others would wait for it at DDP's first step)."""
    state = on_every_process(
        run.accelerator,
        lambda: load_checkpoint(run.accelerator, run.resume_from),
        what=f"loading the checkpoint {run.resume_from}",
    )
    _warn_if_config_changed(state, run.config.trainer)
    return state


def _warn_if_config_changed(state: dict[str, Any], trainer_config: Any) -> None:
    """Resuming with other hyper-parameters is allowed (e.g. more steps) but changes what an exact resume means."""
    saved = state.get("config") or {}
    current = trainer_config.to_dict()
    changed = sorted(key for key in current if key != "steps" and key in saved and saved[key] != current[key])
    if changed:
        logger.warning(
            "resuming with changed trainer settings %s (checkpoint: %s): the run will not match an uninterrupted one",
            {key: current[key] for key in changed},
            {key: saved[key] for key in changed},
        )


def _train_loop(
    run: _RunContext,
    name: str,
    trainer: Any,
    examples: list[TrainExample],
    *,
    extra_state: Callable[[], dict[str, Any]],
    exports: dict[str, Any],
    on_step: Callable[[int, Any], None] | None,
) -> dict[str, float]:
    """Steps from ``trainer.step_count`` to ``trainer.config.steps``: batches, metrics, checkpoints, NaN stop."""
    accelerator, settings, trainer_config = run.accelerator, run.config.run, run.config.trainer
    steps = trainer_config.steps
    started_at = trainer.step_count
    last: dict[str, float] = {}

    def checkpoint(step: int) -> Path:
        state = {**trainer.state_dict(), **extra_state()}
        return save_checkpoint(accelerator, run.output_dir, step, state, keep_last=settings.keep_last, exports=exports)

    metrics = MetricsLogger(
        run.output_dir, enabled=run.is_main, tensorboard=settings.tensorboard, resume_step=trainer.step_count
    )
    with metrics, progress_bar(enabled=settings.progress and run.is_main) as bar:
        task = bar.add_task(name, total=steps, completed=trainer.step_count)
        while trainer.step_count < steps:
            indices = batch_indices(
                trainer.step_count,
                accelerator.process_index,
                accelerator.num_processes,
                trainer_config.batch_size,
                len(examples),
                trainer_config.seed,
            )
            try:
                stats = trainer.step([examples[i] for i in indices])
            except NonFiniteLossError as error:
                _save_bad_batch(run.output_dir, accelerator.process_index, error)
                raise
            last = _scalars(stats)
            metrics.log(stats.step, last, {"frame_position": list(stats.frame_positions)})
            bar.update(task, completed=stats.step, description=f"{name} · acc {stats.accuracy:.2f}")
            if settings.save_every and stats.step % settings.save_every == 0 and stats.step < steps:
                checkpoint(stats.step)
            if on_step is not None:
                on_step(stats.step, trainer)
    if trainer.step_count != started_at or latest_checkpoint(run.output_dir) is None:
        checkpoint(trainer.step_count)
    logger.info("%s done: %d steps (%d in this run)", name, trainer.step_count, trainer.step_count - started_at)
    return last


def train_stage1(
    config: Stage1RunConfig,
    *,
    accelerator: Any = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> RunSummary:
    """Stage 1: train the U-Sampler against the frozen MLLM on ``config.data.train`` (:mod:`msjoe.train.stage1`).

    ``on_step(step, trainer)`` is called on every process after every update (to inspect or interrupt a run).
    """
    from msjoe.train.answerer import MLLMAnswerer
    from msjoe.train.data import QueryWriter
    from msjoe.train.stage1 import Stage1Trainer

    run = _start(config, accelerator)
    encoder, mllm, sampler = on_every_process(run.accelerator, lambda: _load_models(run), what="loading the models")

    def queries() -> Any:
        if config.data.queries == "question":
            return "question"
        # One cache file per process (each writes the queries of its share of the videos), all of them read.
        rank, world = run.accelerator.process_index, run.accelerator.num_processes
        shards = run.output_dir / QUERY_CACHE_SHARDS
        own = run.output_dir / QUERY_CACHE if world == 1 else shards / f"rank{rank}.jsonl"
        others = [run.output_dir / QUERY_CACHE, *sorted(shards.glob("rank*.jsonl"))]
        return QueryWriter(mllm, k=config.trainer.k, cache_path=own, also_read=others)

    examples, prepared, store = _prepare(run, encoder, queries=queries, require_difficulty=True)
    answerer = MLLMAnswerer(
        mllm,
        frame_max_pixels=config.data.frame_max_pixels,
        frame_store=store,
        # One answer cache per process: appends from several processes to one file would interleave.
        cache_path=run.output_dir / "answer_cache" / f"rank{run.accelerator.process_index}.jsonl",
        reward=config.trainer.answer_reward,
        batch_size=config.trainer.answer_batch_size,
    )
    trainer = Stage1Trainer(sampler, answerer, config.trainer, accelerator=run.accelerator)
    if run.resume_from is not None:
        state = _load_resume_state(run)
        trainer.load_state_dict(state)
        answerer.load_state_dict(state["answerer"])
        sampler.training_steps = state["sampler_training_steps"]
        logger.info("resumed from %s at step %d", run.resume_from, trainer.step_count)

    last = _train_loop(
        run,
        "stage 1",
        trainer,
        examples,
        extra_state=lambda: {"answerer": answerer.state_dict(), "sampler_training_steps": sampler.training_steps},
        exports={SAMPLER_EXPORT: sampler},
        on_step=on_step,
    )
    exported = {}
    if run.is_main:
        exported[SAMPLER_EXPORT] = sampler.save_pretrained(run.output_dir / SAMPLER_EXPORT)
    run.accelerator.wait_for_everyone()
    return RunSummary(
        run.output_dir, trainer.step_count, run.resume_from, len(examples), len(prepared.skipped), last, exported
    )


def train_stage2(
    config: Any,
    *,
    accelerator: Any = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> RunSummary:
    """Stage 2: joint GRPO (the MLLM's queries and answers) and REINFORCE (the U-Sampler), :mod:`msjoe.train.stage2`.

    Writes, besides checkpoints, ``sampler/`` (the U-Sampler), ``mllm_adapter/`` (the LoRA adapter, with
    ``finetune: lora``) and ``mllm/`` (a full model with its processor, LoRA merged: ``msjoe ask --mllm`` and
    vLLM load it as they load the base model).
    """
    from msjoe.train.stage2 import Stage2Trainer

    run = _start(config, accelerator)
    encoder, mllm, sampler = on_every_process(run.accelerator, lambda: _load_models(run), what="loading the models")
    examples, prepared, store = _prepare(run, encoder, queries=None, require_difficulty=False)
    # Built before loading a checkpoint: a full fine-tuning reference model is copied from the base weights here.
    trainer = Stage2Trainer(mllm, sampler, encoder, config.trainer, accelerator=run.accelerator, frame_store=store)
    if run.resume_from is not None:
        state = _load_resume_state(run)
        trainer.load_state_dict(state)
        sampler.training_steps = state["sampler_training_steps"]
        logger.info("resumed from %s at step %d", run.resume_from, trainer.step_count)

    last = _train_loop(
        run,
        "stage 2",
        trainer,
        examples,
        extra_state=lambda: {"sampler_training_steps": sampler.training_steps},
        exports={SAMPLER_EXPORT: sampler},
        on_step=on_step,
    )
    exported = {}
    if run.is_main:
        exported[SAMPLER_EXPORT] = sampler.save_pretrained(run.output_dir / SAMPLER_EXPORT)
        exported.update(_export_mllm(trainer.policy_model, mllm, run.output_dir))
    run.accelerator.wait_for_everyone()
    return RunSummary(
        run.output_dir, trainer.step_count, run.resume_from, len(examples), len(prepared.skipped), last, exported
    )


def _export_mllm(policy: Any, mllm: Any, output_dir: Path) -> dict[str, Path]:
    """The trained MLLM as a loadable folder (weights + processor); with LoRA also the adapter alone.

    Merging writes the LoRA update into the policy's base weights in place: it runs after the last checkpoint.
    """
    exported = {}
    model = policy
    if hasattr(policy, "merge_and_unload"):
        policy.save_pretrained(output_dir / MLLM_ADAPTER_EXPORT)
        exported[MLLM_ADAPTER_EXPORT] = output_dir / MLLM_ADAPTER_EXPORT
        model = policy.merge_and_unload()
    model.save_pretrained(output_dir / MLLM_EXPORT)
    mllm.processor.save_pretrained(output_dir / MLLM_EXPORT)
    exported[MLLM_EXPORT] = output_dir / MLLM_EXPORT
    for folder in exported.values():
        apply_umask_to_files(folder)  # safetensors writes 0600 whatever the umask
    return exported


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
