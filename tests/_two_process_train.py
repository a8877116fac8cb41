"""Run stage 1 under torchrun and record, on every process, a digest of the U-Sampler's parameters after each
step, the items the process trained on, the videos it decoded and the checkpoint it resumed from (used by
tests/test_train_run.py; not a test module itself).

    ACCELERATE_USE_CPU=true python -m torch.distributed.run --nproc_per_node 2 tests/_two_process_train.py CONFIG

``MSJOE_TEST_FAIL_INDEXING_ON_RANK=R`` makes indexing fail on process R only (a cache error).
With ``--record-error`` each process writes the exception that ended its run to ``error_rank{R}.json`` and exits
normally (so the launcher does not tear the other processes down first).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

import msjoe.index
import msjoe.train.data
from msjoe.errors import CacheError
from msjoe.train.config import load_run_config
from msjoe.train.run import make_accelerator, train_stage1


def main(config_path: str, record_error: bool = False) -> None:
    torch.set_num_threads(1)
    config = load_run_config(config_path)
    accelerator = make_accelerator()
    digests: list[str] = []
    items: list[list[str]] = []

    def record(step: int, trainer: Any) -> None:
        network = accelerator.unwrap_model(trainer.model)
        digest = hashlib.sha256()
        for name, value in sorted(network.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        digests.append(digest.hexdigest())
        items.append(list(trainer.last_item_ids))

    decoded: list[str] = []  # videos this process decoded to index them
    real_iter_frames = msjoe.index.iter_frames_at_sizes

    def recording_iter_frames(path: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(str(path))
        return real_iter_frames(path, *args, **kwargs)

    msjoe.index.iter_frames_at_sizes = recording_iter_frames
    failing_rank = os.environ.get("MSJOE_TEST_FAIL_INDEXING_ON_RANK")
    if failing_rank is not None and int(failing_rank) == accelerator.process_index:

        def broken_index_video(*args: Any, **kwargs: Any) -> Any:
            raise CacheError(f"simulated: the cache is unwritable on process {accelerator.process_index}")

        msjoe.train.data.index_video = broken_index_video
    try:
        summary = train_stage1(config, accelerator=accelerator, on_step=record)
    except Exception as error:
        if not record_error:
            raise
        out = Path(config.run.output_dir) / f"error_rank{accelerator.process_index}.json"
        out.write_text(json.dumps({"type": type(error).__name__, "message": str(error)}))
        return
    out = Path(config.run.output_dir) / f"params_rank{accelerator.process_index}.json"
    out.write_text(
        json.dumps(
            {
                "num_processes": accelerator.num_processes,
                "digests": digests,
                "items": items,
                "decoded": decoded,
                "resumed_from": summary.resumed_from.name if summary.resumed_from else None,
            }
        )
    )


if __name__ == "__main__":
    try:
        main(sys.argv[1], record_error="--record-error" in sys.argv[2:])
    finally:  # as the CLI commands do: else gloo's worker threads can abort the interpreter at exit
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
