"""``msjoe train ...``: run a training stage from a YAML config (see ``configs/`` for examples)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from msjoe.data.cli import calibrate_command

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
    from msjoe.cli_support import fail
    from msjoe.distributed import launched_processes
    from msjoe.errors import MsjoeError
    from msjoe.train import run
    from msjoe.train.config import ConfigError, load_run_config

    try:
        config = load_run_config(config_path, stage=stage, overrides=overrides)
    except ConfigError as error:
        console.print(f"[bold red]config error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=2) from error
    try:
        # The command owns the processes: the process group is torn down before the interpreter exits, which stops
        # gloo's worker threads; left running, one can free a collective's tensors during interpreter shutdown and
        # abort the process (about 1 run in 60).
        with launched_processes() as state:
            summary = run.train_stage1(config) if stage == 1 else run.train_stage2(config)
    except (MsjoeError, ValueError, FileNotFoundError) as error:
        raise fail(error) from error  # another process's failure is not printed again: that process prints it
    if not state.is_main_process:  # one summary is enough
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


# `msjoe data calibrate` under its first name: the same command, options and output.
app.command(
    "difficulty", help="Alias of `msjoe data calibrate`: each item's difficulty c (pass rate with K uniform frames)."
)(calibrate_command)
