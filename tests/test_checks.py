"""msjoe.checks: the shared argument checks and the annotation-driven field validation of configs."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pytest

from msjoe.checks import Bounds, check_fields, check_int, check_sampling, is_int, is_number


def test_integers_and_numbers_exclude_bools() -> None:
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int(np.int64(3))
    assert is_int(np.int64(3), numbers.Integral) and not is_int(True, numbers.Integral)
    assert is_number(2) and is_number(2.5) and not is_number(False) and not is_number("2")
    check_int("n", np.int64(2), minimum=1)  # numpy integers are integers here
    for value, message in (
        (0, "n must be an integer >= 1, got 0"),
        (True, "got True"),
        (7, "n must be an integer <= 5"),
    ):
        with pytest.raises(ValueError, match=message):
            check_int("n", value, minimum=1, maximum=5)
    check_sampling(0.5, 10)
    with pytest.raises(ValueError, match="fps must be a finite number > 0, got inf"):
        check_sampling(math.inf, 10)
    with pytest.raises(ValueError, match="max_frames must be an integer >= 1"):
        check_sampling(1.0, 0)


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "text"),
    [
        (Bounds(1), [1, 10**9], [0, -1], ">= 1"),
        (Bounds(0, low_open=True), [1e-12], [0, -1], "> 0"),
        (Bounds(0, 1, low_open=True), [1e-9, 1], [0, 1.0000001], "in (0, 1]"),
        (Bounds(0, 1, high_open=True), [0, 0.999], [1, -0.1], "in [0, 1)"),
        (Bounds(high=4), [4, -3], [5], "<= 4"),
    ],
)
def test_bounds_contain_and_describe_their_range(bounds: Bounds, inside: list, outside: list, text: str) -> None:
    assert all(bounds.contains(value) for value in inside)
    assert not any(bounds.contains(value) for value in outside)
    assert bounds.describe() == text


@dataclass
class Settings:
    count: Annotated[int, Bounds(1, why="at least one")] = 1
    rate: Annotated[float, Bounds(0, low_open=True)] = 0.5
    limit: Annotated[int | None, Bounds(1)] = None
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ("x",)
    flag: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 0}, "count must be an int >= 1 (at least one), got 0"),
        ({"count": True}, "count must be an int >= 1 (at least one), got True"),
        ({"count": 1.0}, "count must be an int"),
        ({"rate": math.nan}, "rate must be a finite number > 0, got nan"),
        ({"rate": "0.5"}, "rate must be a finite number > 0"),
        ({"limit": 0}, "limit must be None or an int >= 1, got 0"),
        ({"mode": "c"}, "mode must be one of ('a', 'b'), got 'c'"),
        ({"names": ("x", 1)}, "names must be a tuple of str"),
        ({"names": ["x"]}, "names must be a tuple of str"),
        ({"flag": 1}, "flag must be true or false, got 1"),
    ],
)
def test_check_fields_names_the_field_and_what_it_must_be(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**changes)


def test_check_fields_accepts_values_that_fit() -> None:
    settings = Settings(count=3, rate=2, limit=None, mode="b", names=(), flag=True)  # an int is a number
    assert settings.rate == 2 and Settings(limit=7).limit == 7
