"""Argument checks shared by the library's entry points, with one wording for each error.

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds: every integer check here excludes
it, since a flag passed where a count belongs is a mistake, not a 1.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_int", "check_sampling", "is_int", "is_number"]


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
