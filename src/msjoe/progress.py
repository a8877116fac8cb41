"""The progress bar of msjoe's long jobs (indexing, evaluation): rich, on stderr so stdout stays machine-readable."""

from __future__ import annotations

from typing import Any


def progress_bar(*, enabled: bool = True) -> Any:
    """A ``rich.progress.Progress`` with count, elapsed time and ETA; ``enabled=False`` draws nothing.

    rich is imported here, lazily, so importing msjoe's modules stays cheap.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
