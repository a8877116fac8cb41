"""Telling a broken set-up from items that fail: a run whose first items all fail the same way stops.

A wrong model name, a server that rejects every request, a processor that cannot take any frame: each makes every
item fail with one and the same message, and finishing the run would only report an accuracy of 0 for a set-up that
never answered. The rule (ours): when the first :data:`SYSTEMATIC_FAILURES` items of a run all fail with the same
error message, the run stops with :class:`SystematicFailureError`. Items failing for their own reasons (a corrupt
video names its file, a too-long prompt its length) have differing messages and never trigger it, and one success
or one different error settles that the set-up works.

Until that is settled the failed items' records are held back, not saved: when the run stops they are not recorded
as answered, so the rerun after the fix does them again.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from msjoe.errors import MsjoeError

T = TypeVar("T")

SYSTEMATIC_FAILURES = 5
"""Items that must all fail with one message, from the first on, for the run to stop."""


class SystematicFailureError(MsjoeError):
    """The first items of a run all failed with the same error: the set-up is at fault, not the items."""


class FailureGate(Generic[T]):
    """Watches the outcomes of a run's items in the order they finish (see the module docs).

    ``admit(outcome, error)`` returns the outcomes that can be kept now, in order: none while every item so far
    failed with one error (they are held back), the held ones and this one as soon as that is no longer so.
    """

    def __init__(self, threshold: int = SYSTEMATIC_FAILURES) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self._held: list[T] = []
        self._error: str | None = None
        self._settled = False

    def admit(self, outcome: T, error: str | None) -> list[T]:
        """Record one item's ``outcome`` (``error`` is its error message, ``None`` when it succeeded).

        Raises :class:`SystematicFailureError` when this makes ``threshold`` failures with one message from the
        start; the held outcomes are then dropped.
        """
        if self._settled:
            return [outcome]
        if error is None or (self._held and error != self._error):
            self._settled = True
            admitted, self._held = [*self._held, outcome], []
            return admitted
        self._error = error
        self._held.append(outcome)
        if len(self._held) >= self.threshold:
            count = len(self._held)
            self._held = []
            raise SystematicFailureError(
                f"the first {count} items all failed with the same error, so the set-up is at fault rather than "
                f"the items, and the run stops (those items are not recorded): {error}"
            )
        return []

    def release(self) -> list[T]:
        """The outcomes still held back: the run ended before the rule could decide (fewer items than the
        threshold, all failed alike); they are kept as ordinary failures."""
        held, self._held = self._held, []
        return held
