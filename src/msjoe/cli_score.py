"""``msjoe score``: rescore a prediction file with a benchmark's rule set, loading no model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

SHOWN_IDS = 10  # ids printed per list; the report and --json have them all


def score(
    benchmark: Annotated[str, typer.Option(help="Benchmark: videomme, longvideobench, lvbench, mlvu.")],
    annotations: Annotated[
        str, typer.Option(help="The benchmark's annotation file or folder (or its Hugging Face dataset id).")
    ],
    predictions: Annotated[
        Path,
        typer.Option(
            help="Replies: msjoe's predictions JSONL, lmms-eval's --log_samples JSONL, Video-MME's results JSON, "
            "or a JSON object {id: reply} (LVBench's answer file).",
            exists=True,
            dir_okay=False,
        ),
    ],
    rules: Annotated[
        str | None,
        typer.Option(help="Rule set (see the README's Scoring section) \\[default: the benchmark's official one]."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of a random fallback \\[default: the rule set's].")] = None,
    id_field: Annotated[
        str | None, typer.Option(help="lmms-eval samples: the field of 'doc' holding the item id.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write (or add to) report.md and scores.json here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the benchmark's scores as JSON.")] = False,
) -> None:
    """Score PREDICTIONS against a benchmark's annotations with a rule set, without loading any model; prints
    the headline and lists items without a reply and replies matching no item."""
    from msjoe.cli_support import fail
    from msjoe.errors import MsjoeError
    from msjoe.eval.rescore import rescore

    try:
        entry = rescore(benchmark, annotations, predictions, rules=rules, seed=seed, id_field=id_field, output_dir=out)
    except (MsjoeError, ValueError, FileNotFoundError) as error:
        raise fail(error) from error
    if as_json:
        typer.echo(json.dumps(entry))
        return
    report = entry["runs"][-1]["report"]
    console, counts, ids = Console(), report["counts"], report["ids"]
    value = report["headline"]["value"]
    console.print(f"[bold]{escape(benchmark)}[/], rule set [bold]{escape(report['rules']['name'])}[/]", soft_wrap=True)
    for source in report["rules"]["sources"]:
        console.print(f"  follows {escape(source['url'])}", soft_wrap=True, highlight=False)
    shown = "-" if value is None else f"{100 * value:.1f}"
    console.print(
        f"{escape(report['headline']['metric'])}: {shown}  ({report['overall']['correct']} right of "
        f"{counts['counted']} counted, {counts['items']} items; unparsed {counts['unparsed']}, random fallback "
        f"{counts['random_fallback']})"
    )
    for key, what in (
        ("missing_predictions", "items without a reply"),
        ("unknown_predictions", "replies matching no item"),
    ):
        if ids[key]:
            more = f" ... ({len(ids[key]) - SHOWN_IDS} more)" if len(ids[key]) > SHOWN_IDS else ""
            listed = ", ".join(map(str, ids[key][:SHOWN_IDS]))
            console.print(f"{len(ids[key])} {what}: {escape(listed)}{more}", soft_wrap=True, highlight=False)
    if out is not None:
        console.print(f"report: {escape(str(out / 'report.md'))}", soft_wrap=True)
