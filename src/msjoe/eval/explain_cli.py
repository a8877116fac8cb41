"""``msjoe explain OUT``: explain views of the items of a finished ``msjoe eval`` run (see :mod:`msjoe.eval.explain`).

Kept apart from the command-line module so that ``msjoe --help`` imports no model code: everything heavy is
imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def explain_run(
    out: Annotated[Path, typer.Argument(help="Output folder of `msjoe eval`.", show_default=False)],
    items: Annotated[
        int, typer.Option("--items", "-n", help="Items per sampler and K (wrong answers first).", min=1)
    ] = 20,
    item: Annotated[
        list[str] | None, typer.Option("--item", help="Explain this item id (repeat); overrides --items.")
    ] = None,
    wrong_only: Annotated[bool, typer.Option("--wrong-only", help="Only items answered wrongly (or failed).")] = False,
    benchmark: Annotated[str | None, typer.Option(help="Only this benchmark's runs.")] = None,
    sampler: Annotated[str | None, typer.Option(help="Only these samplers' runs, comma-separated.")] = None,
    frames: Annotated[str | None, typer.Option("--frames", help="Only these budgets K, comma-separated.")] = None,
    png: Annotated[bool, typer.Option("--png", help="Write PNG figures instead of HTML pages.")] = False,
    clip: Annotated[
        str | None, typer.Option("--clip", help="Dual encoder for the similarity [default: the run's own].")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Feature cache of the run \\[default: $MSJOE_CACHE or ~/.cache/msjoe/features]."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="Torch device for the encoder.")] = "cpu",
) -> None:
    """Write explain views (queries, similarity timeline, chosen frames, reply, verdict) of items of an eval run
    into OUT/explain/, with OUT/explain/index.html linking them. Similarities are recomputed from the feature
    cache with the run's encoder, so no MLLM is loaded."""
    from msjoe.cache import FeatureCache
    from msjoe.cli_support import csv_list, fail
    from msjoe.errors import MsjoeError
    from msjoe.eval.explain import explain_items, find_runs
    from msjoe.features import DualEncoder
    from msjoe.progress import progress_bar

    try:
        runs = find_runs(
            out,
            benchmark=benchmark,
            samplers=csv_list(sampler, "--sampler") if sampler else None,
            budgets=csv_list(frames, "--frames", int) if frames else None,
        )
        if not runs:
            raise MsjoeError(f"no matching runs under {out / 'predictions'}")
        encoders = sorted({str(run.settings.get("clip")) for run in runs if run.settings.get("clip")})
        if clip is None:
            if len(encoders) != 1:
                raise ValueError(
                    f"the runs used {len(encoders)} encoders ({', '.join(encoders) or 'none recorded'}): pass --clip"
                )
            clip = encoders[0]
        elif encoders and encoders != [clip]:
            console.print(
                f"[yellow]warning:[/] the runs used {escape(', '.join(encoders))}; "
                f"similarities come from {escape(clip)}"
            )
        encoder = DualEncoder.from_pretrained(clip, device=device)
        with progress_bar() as bar:
            task = bar.add_task("explaining", total=None)
            index = explain_items(
                out,
                encoder,
                FeatureCache(cache_dir),
                runs=runs,
                limit=None if item else items,
                ids=item,
                wrong_only=wrong_only,
                suffix=".png" if png else ".html",
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (MsjoeError, ValueError, OSError) as error:
        raise fail(error) from error
    console.print(f"explain views: {escape(str(index))}", soft_wrap=True)
