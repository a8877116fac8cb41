"""What every ``msjoe`` command shares: the error console, printing a failure, flag names, comma-separated lists.

Below :mod:`msjoe.cli` and the commands kept beside their code (``score``, ``explain``, ``serve``), so those
commands need not import the main CLI module back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


@contextmanager
def command_processes() -> Iterator[Any]:
    """:func:`msjoe.distributed.launched_processes` for a command: a launch that cannot work (``accelerate launch
    --multi_gpu`` without GPUs) is the one-line error it explains, not a traceback from every process."""
    from msjoe.distributed import launched_processes
    from msjoe.errors import MsjoeError

    with ExitStack() as stack:
        try:
            state = stack.enter_context(launched_processes())
        except MsjoeError as error:
            raise fail(error) from error
        yield state


def flag(name: str) -> str:
    """The command-line flag of a keyword argument (``max_retries`` -> ``--max-retries``)."""
    return "--" + name.replace("_", "-")


def fail(error: Exception | str, hint: str | None = None) -> typer.Exit:
    """Print the error (and a hint) and return the exit to raise (see :func:`failure_exit`). Another process's
    failure, forwarded to this one under ``accelerate launch``, is not printed again: the failed process prints it."""
    from msjoe.errors import CacheError

    if is_peer_failure(error):
        return failure_exit(error)
    if isinstance(error, CacheError) and error.remedy:  # the library's remedy names Python arguments
        error, hint = error.problem, "choose a writable folder with --cache-dir or $MSJOE_CACHE"
    message = str(error) + (f" ({hint})" if hint else "")
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return failure_exit(error)


def is_peer_failure(error: BaseException | str) -> bool:
    """Whether ``error`` is only another process's failure (:class:`msjoe.distributed.PeerFailedError`), which
    that process prints itself."""
    from msjoe.distributed import PeerFailedError

    return isinstance(error, PeerFailedError)


def failure_exit(error: BaseException | str) -> typer.Exit:
    """The exit of a command that stopped on ``error``: status 1 for this process's own error, 0 for another
    process's failure (:class:`msjoe.distributed.PeerFailedError`).

    torchrun (and ``accelerate launch``) report the first process to end with a non-zero status and stop the
    others: were the processes that only heard of the failure to end with 1, one of them could be reported, with
    no message, before the failed process has printed its error. Ending with 0, they leave the job's status and the
    report to the failed process. With one process there is no PeerFailedError: every failure ends with 1."""
    return typer.Exit(code=0 if is_peer_failure(error) else 1)


def csv_list(text: str, what: str, convert: type = str) -> list:
    """``"a,b"`` -> ``["a", "b"]`` (converted), rejecting empty entries with a message naming the option."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ValueError(f"{what} must be a comma-separated list without empty entries, got {text!r}")
    try:
        return [convert(part) for part in parts]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of {convert.__name__}s, got {text!r}") from None
