"""``msjoe train ...``: run a training stage from a YAML config (see ``configs/`` for examples)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES

app = typer.Typer(help="Train the U-Sampler (stage 1) or the MLLM and the U-Sampler jointly (stage 2).")
console = Console(stderr=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="YAML run config (sections models, data, trainer, run).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set trainer.steps=20 (repeatable; value parsed as YAML)."),
]


def _run(stage: int, config_path: Path, overrides: list[str] | None) -> None:
    from accelerate import PartialState

    from msjoe.distributed import PeerFailedError
    from msjoe.errors import MsjoeError
    from msjoe.train import run
    from msjoe.train.config import ConfigError, load_run_config

    try:
        config = load_run_config(config_path, stage=stage, overrides=overrides)
    except ConfigError as error:
        console.print(f"[bold red]config error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=2) from error
    try:
        summary = run.train_stage1(config) if stage == 1 else run.train_stage2(config)
    except (MsjoeError, ValueError, FileNotFoundError) as error:
        if not isinstance(error, PeerFailedError):  # another process failed: it prints its own error
            console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=1) from error
    if not PartialState().is_main_process:  # the run set up the processes; one summary is enough
        return
    resumed = f" (resumed from {summary.resumed_from.name})" if summary.resumed_from else ""
    typer.echo(
        f"stage {stage}: {summary.steps_done} steps{resumed} on {summary.examples} items, {summary.skipped} skipped"
    )
    for name, path in summary.exported.items():
        typer.echo(f"{name}: {path}")
    for key, value in summary.last_metrics.items():
        typer.echo(f"  {key}: {value:.4g}")


@app.command("stage1")
def stage1(config: ConfigOption, overrides: SetOption = None) -> None:
    """Stage 1: pre-train the U-Sampler with REINFORCE and the difficulty-aware reward, the MLLM frozen.

    Resumes from the newest checkpoint in run.output_dir (run.resume: auto). Multi-GPU / multi-node:
    `accelerate launch [--num_processes N ...] -m msjoe train stage1 --config FILE`.
    """
    _run(1, config, overrides)


@app.command("stage2")
def stage2(config: ConfigOption, overrides: SetOption = None) -> None:
    """Stage 2: joint evolution — GRPO on the MLLM's queries and answers, REINFORCE on the U-Sampler.

    Same resuming and multi-process launching as stage1.
    """
    _run(2, config, overrides)


@app.command("difficulty")
def difficulty(
    qa_file: Annotated[Path, typer.Argument(help="QA JSONL to rate (msjoe.data.schema).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the rated QA JSONL.")],
    mllm: Annotated[str, typer.Option("--mllm", help="The base MLLM (Hugging Face id or local folder).")],
    k: Annotated[int, typer.Option("--k", "-k", help="Uniform frames per answer: the training budget K.", min=1)],
    samples: Annotated[int, typer.Option("--samples", help="Answers per item when sampling.", min=1)] = 1,
    temperature: Annotated[
        float, typer.Option("--temperature", help="0: greedy, one exact answer per item (cached).", min=0.0)
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first sampled answer.")] = 0,
    fps: Annotated[
        float, typer.Option("--fps", help="Candidate frames per second (as in training).", min=1e-6)
    ] = DEFAULT_FPS,
    max_frames: Annotated[
        int, typer.Option("--max-frames", help="Cap on candidates (as in training).", min=1)
    ] = DEFAULT_MAX_FRAMES,
    frame_max_pixels: Annotated[int, typer.Option("--frame-max-pixels", help="Pixel budget per frame.", min=1)] = (
        448 * 448
    ),
    answer_cache: Annotated[
        Path | None, typer.Option("--answer-cache", help="Greedy answer cache (JSONL): a rerun resumes from it.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Re-rate items that already have one.")] = False,
    video_root: Annotated[
        Path | None, typer.Option("--video-root", help="Folder relative video paths are resolved against.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 or auto.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, bfloat16, float16, float32.")] = "auto",
) -> None:
    """Measure each item's difficulty c: the base MLLM's pass rate with K uniform frames (stage 1 needs it)."""
    from msjoe.data.schema import QAFormatError, read_qa_jsonl
    from msjoe.errors import MsjoeError
    from msjoe.mllm import get_backend
    from msjoe.mllm.base import GenerationConfig
    from msjoe.train.answerer import fill_difficulty

    try:
        items = read_qa_jsonl(qa_file, video_root=video_root)
        model = get_backend("transformers", model=mllm, device=device, dtype=dtype)
        report = fill_difficulty(
            items,
            output,
            mllm=model,
            k=k,
            samples=samples,
            generation=GenerationConfig(temperature=temperature, seed=seed),
            fps=fps,
            max_frames=max_frames,
            frame_max_pixels=frame_max_pixels,
            cache_path=answer_cache,
            overwrite=overwrite,
            progress=True,
        )
    except (MsjoeError, QAFormatError, ValueError, FileNotFoundError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=1) from error
    typer.echo(report.summary())
    if report.rated == 0 and report.kept == 0:
        raise typer.Exit(code=1)
