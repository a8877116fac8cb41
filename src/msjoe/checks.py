"""Argument checks shared by the library's entry points, with one wording for each error.

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds: every integer check here excludes
it, since a flag passed where a count belongs is a mistake, not a 1.

:func:`check_fields` validates a config dataclass from its annotations: each field's type (``int``, ``float``,
``bool``, ``str``, ``Literal``, ``X | None``, ``tuple[str, ...]``, classes) and, for
``Annotated[T, Bounds(...)]`` fields, its range. The run-config reader (:mod:`msjoe.train.config`) sees the same
annotations without the bounds.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = [
    "AT_LEAST_0",
    "AT_LEAST_1",
    "POSITIVE",
    "Bounds",
    "check_fields",
    "check_int",
    "check_sampling",
    "is_int",
    "is_number",
]


def is_int(value: object, kind: type = int) -> bool:
    """Whether ``value`` is an integer of ``kind`` (``int``, or ``numbers.Integral`` to admit numpy integers)
    and not a bool."""
    return isinstance(value, kind) and not isinstance(value, bool)


def is_number(value: object, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """Whether ``value`` is a number of ``kind`` (``int`` or ``float`` by default; ``numbers.Real`` to admit numpy
    scalars) and not a bool."""
    return isinstance(value, kind) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (numpy integers too) in range."""
    if not is_int(value, numbers.Integral) or value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")


def check_sampling(fps: object, max_frames: object) -> None:
    """Raise ``ValueError`` unless the candidate grid is valid: ``fps`` a finite number > 0, ``max_frames`` >= 1."""
    if not is_number(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:  # type: ignore[arg-type,operator]
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    check_int("max_frames", max_frames, minimum=1)


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric config field, as ``Annotated[int, Bounds(1)]``: ``low`` / ``high`` (None: open
    ended), each inclusive unless ``low_open`` / ``high_open``; ``why`` is added to the error message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


AT_LEAST_0 = Bounds(0)
AT_LEAST_1 = Bounds(1)
POSITIVE = Bounds(0, low_open=True)


def check_fields(instance: Any) -> None:
    """Raise ``ValueError`` naming the first field of the dataclass ``instance`` whose value does not fit its
    annotation (type, and range for ``Annotated[..., Bounds(...)]``). Numbers must be finite."""
    hints = typing.get_type_hints(type(instance), include_extras=True)
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        problem = _mismatch(hints[item.name], value)
        if problem is not None:
            raise ValueError(f"{item.name} must be {problem}, got {value!r}")


def _mismatch(hint: Any, value: Any) -> str | None:
    """What ``value`` should have been to fit ``hint`` (None: it fits)."""
    bounds = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        bounds = next((extra for extra in extras if isinstance(extra, Bounds)), None)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arguments = typing.get_args(hint)
        options = [option for option in arguments if option is not type(None)]
        optional = len(options) < len(arguments)
        if value is None and optional:
            return None
        problems = [
            _mismatch(option if bounds is None else typing.Annotated[option, bounds], value) for option in options
        ]
        if any(problem is None for problem in problems):
            return None
        return ("None or " if optional else "") + " or ".join(str(problem) for problem in problems)
    if origin is Literal:
        allowed = typing.get_args(hint)
        return None if value in allowed and not isinstance(value, bool) else f"one of {allowed}"
    if origin is tuple:
        item_hint = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        if not isinstance(value, tuple) or any(_mismatch(item_hint, item) is not None for item in value):
            return f"a tuple of {getattr(item_hint, '__name__', item_hint)}"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int or hint is float:
        integer = hint is int
        what = "an int" if integer else "a finite number"
        ok = is_int(value) if integer else is_number(value) and math.isfinite(value)
        if bounds is not None:
            what += f" {bounds.describe()}" + (f" ({bounds.why})" if bounds.why else "")
            ok = ok and bounds.contains(value)
        return None if ok else what
    if hint is Any:
        return None
    if isinstance(hint, type):
        return None if isinstance(value, hint) else f"a {hint.__name__}"
    return None
