"""msjoe.distributed's helpers on two gloo processes (used by tests/test_distributed.py; not a test module itself).

    ACCELERATE_USE_CPU=true python -m torch.distributed.run --nproc_per_node 2 tests/_two_process_collectives.py OUT

Each process runs the scenarios below and writes what each one returned or raised to ``OUT/rank{R}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from msjoe.distributed import all_results, main_process_first, on_every_process, process_state


def outcome(call: Any) -> dict[str, Any]:
    try:
        return {"result": call()}
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}


def main(out: Path) -> None:
    state = process_state()
    assert state.num_processes == 2, state
    rank = state.process_index
    marker = out / "written-by-main"

    def write_then_read() -> bool:  # the main process writes; the others must find it written
        if state.is_main_process:
            marker.write_text("cached")
        return marker.exists()

    def fail_on(failing_rank: int) -> Any:
        def work() -> int:
            ran.append(rank)
            if rank == failing_rank:
                raise ValueError(f"bad video on process {rank}")
            return rank * 10

        return work

    ran: list[int] = []
    results = {
        "main_first_ok": outcome(lambda: main_process_first(state, write_then_read, what="caching")),
        "main_first_main_fails": outcome(lambda: main_process_first(state, fail_on(0), what="caching")),
        "main_first_ran": list(ran),
    }
    ran.clear()
    results["every_ok"] = outcome(lambda: on_every_process(state, lambda: rank * 10, what="indexing"))
    results["gathered"] = all_results(state, {"rank": rank})
    results["every_other_fails"] = outcome(lambda: on_every_process(state, fail_on(1), what="indexing"))
    results["every_ran"] = list(ran)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    state.destroy_process_group()  # else gloo's threads abort the interpreter at exit


if __name__ == "__main__":
    main(Path(sys.argv[1]))
