"""Decoding workers (``msjoe.decode_worker.run``) whose process is killed between videos, as the out-of-memory killer
may pick an idle worker, or part-way through writing a message. Tests pass :func:`run_dying_once_when_idle`,
:func:`run_dying_at_once` or :func:`run_dying_mid_message` as the worker's target (they run in spawned processes,
which import this module by name from the tests folder).

``MSJOE_TEST_DEATH_MARKER``: a file the first worker to die creates; with it, only that one worker ever dies.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path
from typing import Any

from msjoe import decode_worker


class _TasksKillingOnce:
    """The task queue of a worker that dies (SIGKILL) when it asks for its next task after a segment of a video whose
    file name contains "die-after", having flushed that segment's messages: a death between videos that loses
    nothing. That video comes first, so other videos' segments are still to do when the worker dies."""

    def __init__(self, tasks: Any, results: Any) -> None:
        self.tasks, self.results, self.previous = tasks, results, None

    def get(self) -> Any:
        if self.previous is not None and "die-after" in Path(self.previous.path).name and _first_to_die():
            self.results.close()
            self.results.join_thread()  # the segment's messages are all on the queue
            os.kill(os.getpid(), signal.SIGKILL)
        self.previous = self.tasks.get()
        return self.previous


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


def run_dying_mid_message(tasks: Any, results: Any, busy: Any = None) -> None:
    """Killed while writing the first message of any video whose file name contains "cut": the queue's write lock
    held and a message cut short in the pipe, promising a megabyte and holding a kilobyte."""
    decode_segment = decode_worker.decode_segment

    def decode_or_die_writing(segment: decode_worker.Segment, send: Any) -> None:
        if "cut" not in Path(segment.path).name:
            decode_segment(segment, send)
            return
        results._wlock.acquire()
        os.write(results._writer.fileno(), struct.pack("!i", 1 << 20) + bytes(1024))
        os.kill(os.getpid(), signal.SIGKILL)

    decode_worker.decode_segment = decode_or_die_writing
    decode_worker.run(tasks, results, busy)
