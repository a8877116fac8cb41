"""Training metrics: one JSON line per step in ``metrics.jsonl`` and, optionally, TensorBoard event files.

Only the main process writes. On resume from step N, lines of steps after N (written before the crash, now to be
redone) are dropped from ``metrics.jsonl`` and TensorBoard purges its events after N, so each step appears once.
Histograms (e.g. where in the video the chosen frames lie) go to TensorBoard as histograms and to the JSONL as
fixed-bin counts over [0, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msjoe.atomic import write_text_atomically

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
HISTOGRAM_BINS = 10


class MetricsLogger:
    """Append step metrics to ``<output_dir>/metrics.jsonl`` (and TensorBoard); a no-op when not ``enabled``."""

    def __init__(
        self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS_FILE
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a crashed run wrote after the checkpoint are hidden, as they will be redone.
            self._writer = SummaryWriter(
                str(Path(output_dir) / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step else None
            )

    def log(
        self,
        step: int,
        scalars: Mapping[str, float],
        histograms: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Record ``scalars`` (and ``histograms`` of values in [0, 1]) for ``step``; one flushed line per call."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, **{key: _json_number(value) for key, value in scalars.items()}}
        for name, values in (histograms or {}).items():
            counts, _ = np.histogram(np.clip(np.asarray(values, dtype=float), 0.0, 1.0), HISTOGRAM_BINS, (0.0, 1.0))
            record[f"{name}_histogram"] = counts.tolist()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
            for name, values in (histograms or {}).items():
                if len(values):
                    self._writer.add_histogram(name, np.asarray(values, dtype=float), step, bins=HISTOGRAM_BINS)
            self._writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _truncate_after(path: Path, step: int) -> None:
    """Keep only complete records of steps ``<= step`` (all of them go when starting afresh, ``step == 0``)."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record.get("step", math.inf) <= step]
    write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))


def _json_number(value: float) -> float | str:
    """JSON has no NaN/inf: write them as strings so the line stays valid JSON."""
    value = float(value)
    return value if math.isfinite(value) else str(value)
