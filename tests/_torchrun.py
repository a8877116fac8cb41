"""Start a script, or ``-m msjoe``, as two CPU processes under torchrun (gloo), as the multi-process tests do."""

from __future__ import annotations

import os
import sys

TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
"""The launcher's prefix: ``--standalone`` picks a free rendezvous port on this machine."""


def two_process_env(**extra: str) -> dict[str, str]:
    """This environment with accelerate on CPU and one thread a process (float results must not depend on it)."""
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
