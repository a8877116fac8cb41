"""``msjoe index`` as one process of a two-process job in which process 1 fails (used by tests/test_distributed.py;
not a test module itself).

    python tests/_two_process_cli.py EMPTY_FOLDER --cache-dir CACHE   (with RANK, WORLD_SIZE, MASTER_ADDR, ...)

Process 1 fails loading the encoder (as on a GPU out of memory); process 0 loads nothing (the collective that
follows tells it about process 1 before it would use the encoder). Everything else is the real command.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from msjoe.errors import ModelLoadError
from msjoe.features import DualEncoder


def load_or_fail_on_process_1(name: str, **options: Any) -> object:
    if os.environ["RANK"] == "1":
        raise ModelLoadError(f"cannot load {name} on process 1: CUDA out of memory")
    return object()


if __name__ == "__main__":
    DualEncoder.from_pretrained = staticmethod(load_or_fail_on_process_1)  # type: ignore[method-assign,assignment]
    from msjoe.cli import app

    app(args=["index", *sys.argv[1:]], prog_name="msjoe")
