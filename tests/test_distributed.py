"""msjoe.distributed on two real gloo processes under torchrun: results, ordering, and failures reaching everyone."""

from __future__ import annotations

import itertools
import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _torchrun import TWO_PROCESSES, two_process_env
from msjoe.cli_support import failure_exit
from msjoe.distributed import (
    PeerFailedError,
    SingleProcess,
    all_results,
    check_launch,
    collective_timeout,
    main_process_first,
    my_share,
    on_every_process,
    process_state,
)
from msjoe.errors import MsjoeError
from msjoe.synthetic_video import write_video

REPO = Path(__file__).resolve().parents[1]


def test_one_process_just_calls_the_work() -> None:
    state = process_state()
    assert state.num_processes == 1
    assert main_process_first(state, lambda: 7, what="x") == 7
    assert on_every_process(state, lambda: 7, what="x") == 7
    assert all_results(state, 7) == [7]
    with pytest.raises(ValueError, match="own error"):  # the error itself, not a wrapper
        on_every_process(state, lambda: (_ for _ in ()).throw(ValueError("own error")), what="x")


@pytest.mark.slow
def test_two_processes_share_results_and_fail_together(tmp_path: Path) -> None:
    command = [
        *TWO_PROCESSES,
        *[str(REPO / "tests" / "_two_process_collectives.py"), str(tmp_path)],
    ]
    result = subprocess.run(command, env=two_process_env(), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    main, other = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))

    # The main process wrote first; the other found its file.
    assert main["main_first_ok"] == other["main_first_ok"] == {"result": True}
    # The main process failed first: it raises its own error, the other is told and never runs the work.
    assert main["main_first_main_fails"] == {"error": "ValueError", "message": "bad video on process 0"}
    assert other["main_first_main_fails"] == {
        "error": "PeerFailedError",
        "message": "process 0 failed while caching: ValueError: bad video on process 0",
    }
    assert main["main_first_ran"] == [0] and other["main_first_ran"] == []
    # Each process gets its own result; all_results shares them, by process index.
    assert main["every_ok"] == {"result": 0} and other["every_ok"] == {"result": 10}
    assert main["gathered"] == other["gathered"] == [{"rank": 0}, {"rank": 1}]
    # Process 1 failed: it raises its own error, the main process one naming it (both ran the work).
    assert other["every_other_fails"] == {"error": "ValueError", "message": "bad video on process 1"}
    assert main["every_other_fails"] == {
        "error": "PeerFailedError",
        "message": "process 1 failed while indexing: ValueError: bad video on process 1",
    }
    assert main["every_ran"] == [0] and other["every_ran"] == [1]


def test_my_share_deals_whole_groups_largest_first_and_keeps_the_order() -> None:
    videos = ["a", "a", "b", "c", "b", "d", "a", "e"]
    items = [(video, position) for position, video in enumerate(videos)]
    shares = [my_share(SingleProcess(3, rank, rank == 0), items, lambda item: item[0]) for rank in range(3)]
    # By size: a (3 items) -> 0, b (2) -> 1, c (1) -> 2; d -> 2 (least loaded: 1); e -> 1 (2 and 2 tie: lower index).
    assert [[video for video, _ in share] for share in shares] == [["a", "a", "a"], ["b", "b", "e"], ["c", "d"]]
    assert sorted(item for share in shares for item in share) == sorted(items)  # nothing lost or doubled
    assert all(share == sorted(share, key=lambda item: item[1]) for share in shares)
    assert my_share(SingleProcess(), items, lambda item: item[0]) == items
    # A weight of its own (msjoe index passes the file size): the heaviest group goes alone.
    sizes = {"a": 1.0, "b": 1.0, "c": 9.0, "d": 1.0, "e": 1.0}
    heavy = [
        my_share(SingleProcess(2, rank, rank == 0), items, lambda item: item[0], lambda g: sizes[g[0][0]])
        for rank in range(2)
    ]
    assert [sorted({video for video, _ in share}) for share in heavy] == [["c"], ["a", "b", "d", "e"]]


@pytest.mark.parametrize("seed", range(20))
def test_my_share_is_within_graham_bound_of_the_best_split(seed: int) -> None:
    """Longest-processing-time first is within (4/3 - 1/(3m)) of the best makespan (Graham 1969): brute force."""
    rng = random.Random(seed)
    processes = rng.choice([2, 3])
    weights = [rng.randint(1, 20) for _ in range(rng.randint(processes, 8))]
    items = list(enumerate(weights))
    shares = [
        my_share(SingleProcess(processes, rank, rank == 0), items, lambda item: item[0], lambda g: g[0][1])
        for rank in range(processes)
    ]
    assert sorted(item for share in shares for item in share) == items
    makespan = max(sum(w for _, w in share) for share in shares)
    best = min(
        max(sum(w for w, p in zip(weights, assignment, strict=True) if p == q) for q in range(processes))
        for assignment in itertools.product(range(processes), repeat=len(weights))
    )
    assert best <= makespan <= (4 / 3 - 1 / (3 * processes)) * best + 1e-9


def test_a_launch_that_accelerate_saw_as_one_process_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_launch(SingleProcess())  # not launched: one process is right
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_launch(SingleProcess(num_processes=2, process_index=0, is_main_process=True))
    expected = r"launched as 2 processes but accelerate set up a single one.*ACCELERATE_USE_CPU"
    with pytest.raises(MsjoeError, match=expected):
        check_launch(SingleProcess())


@pytest.mark.parametrize("value", ["0", "-5", "an hour"])
def test_a_bad_collective_timeout_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MSJOE_COLLECTIVE_TIMEOUT_MIN", value)
    with pytest.raises(
        MsjoeError, match=f"MSJOE_COLLECTIVE_TIMEOUT_MIN must be a positive number of minutes, got '{value}'"
    ):
        collective_timeout()


def test_the_collective_timeout_defaults_to_three_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSJOE_COLLECTIVE_TIMEOUT_MIN", raising=False)
    assert collective_timeout().total_seconds() == 3 * 3600
    monkeypatch.setenv("MSJOE_COLLECTIVE_TIMEOUT_MIN", "30")
    assert collective_timeout().total_seconds() == 1800


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_only_the_failed_process_prints_its_error_and_ends_with_1(tmp_path: Path) -> None:
    # The two processes are started here, with the variables torchrun would set, rather than under torchrun: torchrun
    # stops the other processes at the first failure and reports no exit status per process.
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", duration=2.0, fps=4, size=(64, 48))
    port = str(_free_port())
    options = ["--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    processes = [
        subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "_two_process_cli.py"), str(tmp_path / "videos"), *options],
            env=two_process_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in (0, 1)
    ]
    (_, main_err), (_, other_err) = (process.communicate(timeout=300) for process in processes)
    main_err, other_err = main_err.decode(), other_err.decode()
    assert [process.returncode for process in processes] == [0, 1], main_err[-3000:] + other_err[-3000:]
    assert other_err.count("error:") == 1 and "cannot load" in other_err and "CUDA out of memory" in other_err
    assert "error" not in main_err.lower() and "Traceback" not in main_err + other_err


@pytest.mark.parametrize(
    ("error", "code"),
    [(PeerFailedError("process 1 failed while indexing: ValueError: bad video"), 0), (MsjoeError("bad video"), 1)],
)
def test_a_process_that_only_heard_of_another_failure_ends_with_0(error: Exception, code: int) -> None:
    # A process's own error ends it with 1 (as with one process); a failure forwarded from another process with 0,
    # so that the launcher reports the process that failed, with its message.
    assert failure_exit(error).exit_code == code
