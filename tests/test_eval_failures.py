"""The rule that stops a run whose first items all fail the same way (msjoe.eval.failures), on hand-made outcomes."""

from __future__ import annotations

import pytest

from msjoe.eval.failures import SYSTEMATIC_FAILURES, FailureGate, SystematicFailureError


def test_the_first_items_failing_alike_stop_the_run_and_are_dropped() -> None:
    gate: FailureGate[str] = FailureGate(threshold=3)
    assert gate.admit("a", "HTTP 400: no such model") == []
    assert gate.admit("b", "HTTP 400: no such model") == []
    with pytest.raises(SystematicFailureError, match=r"first 3 items .*: HTTP 400: no such model"):
        gate.admit("c", "HTTP 400: no such model")
    assert gate.release() == []  # the held outcomes are not kept


def test_a_success_releases_the_held_failures_and_settles_the_question() -> None:
    gate: FailureGate[str] = FailureGate(threshold=3)
    assert gate.admit("a", "boom") == [] and gate.admit("b", "boom") == []
    assert gate.admit("c", None) == ["a", "b", "c"]
    for name in "defgh":  # failures after a success are the items' own, however alike
        assert gate.admit(name, "boom") == [name]
    assert gate.release() == []


def test_a_different_error_releases_the_held_failures() -> None:
    gate: FailureGate[str] = FailureGate(threshold=3)
    assert gate.admit("a", "corrupt video a.mp4") == []
    assert gate.admit("b", "corrupt video b.mp4") == ["a", "b"]
    assert gate.admit("c", "corrupt video b.mp4") == ["c"]


def test_a_run_shorter_than_the_threshold_keeps_its_failures() -> None:
    gate: FailureGate[int] = FailureGate()
    held = [gate.admit(i, "boom") for i in range(SYSTEMATIC_FAILURES - 1)]
    assert held == [[]] * (SYSTEMATIC_FAILURES - 1)
    assert gate.release() == list(range(SYSTEMATIC_FAILURES - 1))


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold"):
        FailureGate(threshold=0)
