"""``msjoe sim ...``: train and compare samplers on a simulator (built-in variant or your own ``module:factory``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msjoe.cli_support import console, fail

app = typer.Typer(
    help="Train and compare key-frame samplers on simulated items (built-in variants or your own simulator).",
    no_args_is_help=True,
)

SimulatorOption = Annotated[
    str,
    typer.Option(
        "--simulator", help="A built-in variant (`msjoe sim list`) or module:factory (module may be a .py path)."
    ),
]


@app.command("list")
def list_command() -> None:
    """The built-in simulator variants, their role (validation: defaults are chosen on it; held-out: reported only)
    and what each assumes."""
    from msjoe.sim.variants import variants

    table = Table("variant", "role", "T", "assumption")
    for variant in variants():
        config = variant.config
        table.add_row(variant.name, variant.role, f"{config.min_frames}-{config.max_frames}", variant.description)
    Console().print(table)


@app.command("train")
def train_command(
    simulator: SimulatorOption,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder; rerunning into it resumes.")],
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.", min=1)] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the network's initialisation and the draws.", min=0)] = 0,
    k: Annotated[int, typer.Option("--k", "-k", help="Frames drawn per rollout (the training budget).", min=1)] = 16,
    items_seed: Annotated[
        int, typer.Option("--items-seed", help="Seed of the training items; evaluate on another.", min=0)
    ] = 0,
    reward: Annotated[
        str,
        typer.Option(
            "--reward", help="expected: the answerer's probability (low variance); sampled: a coin flip per answer."
        ),
    ] = "expected",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Stage-1 training of a fresh U-Sampler on the simulator's items; the folder loads with
    `--sampler usampler --sampler-checkpoint DIR` and `get_sampler("usampler", checkpoint=DIR)`."""
    from msjoe.sim.protocol import load_simulator
    from msjoe.sim.train import train_on_simulator
    from msjoe.train.stage1 import Stage1Config

    try:
        loaded = load_simulator(simulator, budget=k)
        config = Stage1Config(steps=steps, k=k, seed=seed)
        train_on_simulator(
            loaded, out, config=config, items_seed=items_seed, reward=reward, progress=progress, description=simulator
        )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"U-Sampler trained for {steps} steps on {escape(simulator)}: {escape(str(out))}")


@app.command("eval")
def eval_command(
    simulator: SimulatorOption,
    sampler: Annotated[
        str, typer.Option("--sampler", help="Samplers to compare, comma-separated; the first is the reference.")
    ] = "usampler,nms-z,binmax-z,binmax,uniform",
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="U-Sampler folder for `usampler` (untrained without it).")
    ] = None,
    k: Annotated[str, typer.Option("--k", "-k", help="Frame budgets, comma-separated.")] = "8,16",
    items: Annotated[int, typer.Option("--items", help="Items to evaluate on.", min=2)] = 500,
    items_seed: Annotated[int, typer.Option("--items-seed", help="Seed of the evaluation items.", min=0)] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write every number to this JSON file.")] = None,
) -> None:
    """Evidence recall and simulated accuracy of each sampler on the same items, with paired differences to the
    first sampler (mean ± standard error over items)."""
    from msjoe.atomic import write_text_atomically
    from msjoe.samplers import get_sampler
    from msjoe.sim.evaluate import compare, paired_difference
    from msjoe.sim.protocol import checked_items, load_simulator

    try:
        names = [name.strip() for name in sampler.split(",")]
        budgets = [int(part) for part in k.split(",")]
        if not all(names) or not budgets or min(budgets) < 1:
            raise ValueError(f"--sampler and -k must be non-empty comma-separated lists, got {sampler!r} and {k!r}")
        selectors = {}
        for name in names:
            options = {"checkpoint": checkpoint} if name == "usampler" and checkpoint is not None else {}
            selectors[name] = get_sampler(name, **options)
        if "usampler" in names and checkpoint is None:
            console.print("warning: `usampler` without --checkpoint is the untrained network", style="yellow")
        loaded = load_simulator(simulator)
        evaluated = checked_items(loaded, items, items_seed)
        results = compare(selectors, evaluated, budgets)
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc

    reference = names[0]
    table = Table(
        "sampler", "K", "evidence recall", f"Δ recall vs {reference}", "accuracy", f"Δ accuracy vs {reference}"
    )
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        for budget in budgets:
            scores, base = results[name][budget], results[reference][budget]
            recall_diff = paired_difference(scores.recall, base.recall)
            accuracy_diff = paired_difference(scores.accuracy, base.accuracy)
            table.add_row(
                name,
                str(budget),
                f"{scores.mean_recall:.3f}",
                "" if name == reference else f"{recall_diff[0]:+.3f} ± {recall_diff[1]:.3f}",
                f"{scores.mean_accuracy:.3f}",
                "" if name == reference else f"{accuracy_diff[0]:+.3f} ± {accuracy_diff[1]:.3f}",
            )
            report.setdefault(name, {})[str(budget)] = {
                "evidence_recall": scores.mean_recall,
                "accuracy": scores.mean_accuracy,
                "recall_minus_reference": recall_diff[0],
                "recall_minus_reference_stderr": recall_diff[1],
                "accuracy_minus_reference": accuracy_diff[0],
                "accuracy_minus_reference_stderr": accuracy_diff[1],
            }
    Console().print(table)
    console.print(f"{items} items of {escape(simulator)} (items seed {items_seed}), reference {escape(reference)}")
    if json_out is not None:
        meta = {"simulator": simulator, "items": items, "items_seed": items_seed, "checkpoint": str(checkpoint)}
        write_text_atomically(json_out, json.dumps({**meta, "results": report}, indent=2) + "\n")
