"""A decoding worker (``msjoe.decode_worker.run``) whose process is killed part-way through any video whose file name
contains "crash", after sending that video's first batch: as when FFmpeg crashes on a damaged file, or the
out-of-memory killer picks the worker. Tests pass its :func:`run` as the worker's target (it runs in a spawned
process, which imports this module by name from the tests folder)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from msjoe import decode_worker

_decode_segment = decode_worker.decode_segment


def _decode_then_die(segment: decode_worker.Segment, send: Any) -> None:
    if "crash" not in Path(segment.path).name:
        _decode_segment(segment, send)
        return

    def send_then_die(message: tuple) -> None:
        send(message)
        if message[0] == decode_worker.FRAMES:
            os.kill(os.getpid(), signal.SIGKILL)

    _decode_segment(segment, send_then_die)


def run(tasks: Any, results: Any, busy: Any = None) -> None:
    decode_worker.decode_segment = _decode_then_die
    decode_worker.run(tasks, results, busy)
