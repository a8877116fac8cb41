"""Work split over the processes of an ``accelerate launch`` (or ``torchrun``) job, failing together.

accelerate's own helpers assume nothing fails: with ``main_process_first()``, an exception on the main process
skips the barrier it owes the others, and with a plain ``gather_object`` a process that raised never joins the
collective. Either way the other processes wait for the collective timeout and then fail with an unrelated
message; on one node the launcher usually tears them down sooner, on several nodes it does not.
:func:`main_process_first` and :func:`on_every_process` end every process with an error naming the process that
failed and its error.

``state`` is an :class:`accelerate.Accelerator` or :class:`accelerate.PartialState` (anything with
``num_processes``, ``process_index`` and ``is_main_process``). With one process both helpers just call ``work()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from msjoe.errors import MsjoeError

T = TypeVar("T")


@dataclass(frozen=True)
class SingleProcess:
    """The ``state`` of a job that runs in this process alone (no launcher, nothing to import)."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True


class PeerFailedError(MsjoeError):
    """Another process of the job failed (this one did not): it reports its own error."""


@contextmanager
def launched_processes() -> Iterator[Any]:
    """:func:`process_state` for a command's lifetime; the process group is torn down at the end, failed or not
    (else gloo's threads can abort the interpreter at exit)."""
    state = process_state()
    try:
        yield state
    finally:
        if state.num_processes > 1:
            state.destroy_process_group()


def collective_timeout() -> timedelta:
    """How long a process waits for the others at a collective: 3 hours, or ``MSJOE_COLLECTIVE_TIMEOUT_MIN``
    minutes. Shares of indexing, query writing or evaluation can finish hours apart; torch's default (10 minutes
    with NCCL) would kill the job while a process is still working."""
    minutes = os.environ.get("MSJOE_COLLECTIVE_TIMEOUT_MIN", "180")
    try:
        value = float(minutes)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise MsjoeError(f"MSJOE_COLLECTIVE_TIMEOUT_MIN must be a positive number of minutes, got {minutes!r}")
    return timedelta(minutes=value)


def process_state() -> Any:
    """This process's :class:`accelerate.PartialState`: one process, or one of many under ``accelerate launch``
    or ``torchrun`` (on CPU with ``ACCELERATE_USE_CPU=true``, which ``accelerate launch --cpu`` sets).

    Raises :class:`MsjoeError` when the launcher started several processes but accelerate set up one (each would
    then do all the work).
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=collective_timeout())
    check_launch(state)
    return state


def check_launch(state: Any) -> None:
    """Raise :class:`MsjoeError` when the launcher started several processes (``WORLD_SIZE``) but accelerate set
    up a single one: each process would then do all the work alone and write the same files."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:
        raise MsjoeError(
            f"launched as {launched} processes but accelerate set up a single one (no GPU?): on CPU set "
            "ACCELERATE_USE_CPU=true (e.g. `ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m msjoe ...`) or "
            "use `accelerate launch --cpu`"
        )


def my_share(
    state: Any,
    items: Sequence[T],
    group: Callable[[T], Hashable],
    weight: Callable[[list[T]], float] = len,
) -> list[T]:
    """The items this process handles when each group (e.g. every question about one video) goes whole to one
    process; the items keep their order.

    Groups are dealt largest first, by ``weight`` (default: how many items they hold; ``msjoe index`` passes the
    file size), each to the process with the least weight so far: longest-processing-time-first scheduling, within
    4/3 of the best split, where dealing in turn can give one process every long video. Ties go to the group seen
    first and the lower process index, so every process computes the same split. Splitting item by item instead
    would have several processes decode and encode the same video at once."""
    if state.num_processes == 1:
        return list(items)
    members: dict[Hashable, list[T]] = {}
    for item in items:
        members.setdefault(group(item), []).append(item)
    weights = {key: float(weight(group_items)) for key, group_items in members.items()}
    loads = [0.0] * state.num_processes
    mine: set[Hashable] = set()
    for key in sorted(members, key=lambda key: -weights[key]):  # a stable sort: equal weights keep first-seen order
        process = min(range(state.num_processes), key=lambda p: (loads[p], p))
        loads[process] += weights[key]
        if process == state.process_index:
            mine.add(key)
    return [item for item in items if group(item) in mine]


def process_device(state: Any, device: str) -> str:
    """The device this process should use for ``device``: with several processes, ``"cuda"`` and ``"auto"``
    mean this process's own GPU (accelerate's ``state.device``), not every process on ``cuda:0``."""
    if state.num_processes > 1 and device in ("cuda", "auto") and state.device.type == "cuda":
        return str(state.device)
    return device


def main_process_first(state: Any, work: Callable[[], T], *, what: str) -> T:
    """``work()`` on the main process, then on the others (which then find what it cached); its result here."""
    if state.num_processes == 1:
        return work()
    result: Any = None
    for my_turn in (state.is_main_process, not state.is_main_process):
        error = None
        if my_turn:
            result, error = _attempt(work)
        _raise_if_any_failed(error, what)
    return result


def on_every_process(state: Any, work: Callable[[], T], *, what: str) -> T:
    """``work()`` on every process at once; this process's result (see :func:`all_results` to share them)."""
    if state.num_processes == 1:
        return work()
    result, error = _attempt(work)
    _raise_if_any_failed(error, what)
    return result  # type: ignore[return-value]


def all_results(state: Any, value: T) -> list[T]:
    """Every process's ``value``, by process index, on every process (picklable values only: they travel through
    ``accelerate.utils.gather_object``; keep them small)."""
    if state.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return list(gather_object([value]))


def _attempt(work: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """``(work(), None)``, or ``(None, error)``: the error is re-raised once the other processes have heard of it."""
    try:
        return work(), None
    except Exception as error:
        return None, error


def _raise_if_any_failed(error: BaseException | None, what: str) -> None:
    """A collective: every process learns whether any failed; a failed process re-raises its own error, the
    others raise one naming the first failed process and its error."""
    from accelerate.utils import gather_object

    reports = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
    if error is not None:
        raise error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, report = failed[0]
        raise PeerFailedError(f"process {rank} failed while {what}: {report}")
