"""msjoe.distributed on two real gloo processes under torchrun: results, ordering, and failures reaching everyone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from _torchrun import TWO_PROCESSES, two_process_env
from msjoe.distributed import (
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


def test_my_share_gives_whole_groups_round_robin_and_keeps_the_order() -> None:
    videos = ["a", "a", "b", "c", "b", "d", "a", "e"]
    items = [(video, position) for position, video in enumerate(videos)]
    shares = [my_share(SingleProcess(3, rank, rank == 0), items, lambda item: item[0]) for rank in range(3)]
    # Groups in order of first appearance: a -> 0, b -> 1, c -> 2, d -> 0, e -> 1.
    assert [[video for video, _ in share] for share in shares] == [["a", "a", "d", "a"], ["b", "b", "e"], ["c"]]
    assert sorted(item for share in shares for item in share) == sorted(items)  # nothing lost or doubled
    assert all(share == sorted(share, key=lambda item: item[1]) for share in shares)
    assert my_share(SingleProcess(), items, lambda item: item[0]) == items


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
