"""Decoding workers (``msjoe.decode_worker.run``) whose process is killed between videos, as the out-of-memory killer
may pick an idle worker. Tests pass :func:`run_dying_once_when_idle` or :func:`run_dying_at_once` as the worker's
target (they run in spawned processes, which import this module by name from the tests folder).

``MSJOE_TEST_DEATH_MARKER``: a file the first worker to die creates; with it, only that one worker ever dies.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from msjoe import decode_worker


class _TasksKillingOnce:
    """The task queue of a worker that dies (SIGKILL) when it asks for its second task: after its first segment,
    whose messages it has flushed first, so the death is between videos, with nothing lost."""

    def __init__(self, tasks: Any, results: Any) -> None:
        self.tasks, self.results, self.asked = tasks, results, 0

    def get(self) -> Any:
        self.asked += 1
        if self.asked == 2 and _first_to_die():
            self.results.close()
            self.results.join_thread()  # the first segment's messages are all on the queue
            os.kill(os.getpid(), signal.SIGKILL)
        return self.tasks.get()


def _first_to_die() -> bool:
    try:
        os.close(os.open(os.environ["MSJOE_TEST_DEATH_MARKER"], os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def run_dying_once_when_idle(tasks: Any, results: Any, busy: Any = None) -> None:
    decode_worker.run(_TasksKillingOnce(tasks, results), results, busy)


def run_dying_at_once(tasks: Any, results: Any, busy: Any = None) -> None:
    """Dies before its first task: no worker ever decodes anything."""
    os.kill(os.getpid(), signal.SIGKILL)
