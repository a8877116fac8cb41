"""One registry helper for the things users add by name: samplers, benchmarks, MLLM backends, scoring rule sets.

A :class:`Registry` maps names to entries (classes or specs), refuses a name taken by another entry, and says
which names exist when asked for an unknown one. Built-in entries whose modules are heavy can be registered lazily:
their module is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Entries of one kind by name.

    Args:
        what: the kind, for messages (``"sampler"``, ``"benchmark"``, ``"MLLM backend"``).
        unknown_error: the exception raised for an unknown name (called with the message).
        lazy: name -> module whose import registers that name (listed by :meth:`names` before it is imported).
    """

    def __init__(
        self, what: str, *, unknown_error: type[Exception] = ValueError, lazy: Mapping[str, str] | None = None
    ) -> None:
        self.what = what
        self.unknown_error = unknown_error
        self.lazy = dict(lazy or {})
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``. The same entry again (a module imported twice) is a no-op; another entry
        under a taken name is a ``ValueError`` naming the holder."""
        existing = self._entries.get(name)
        if existing is not None and _identity(existing) != _identity(entry):
            holder = _identity(existing)
            by = f" by {holder}" if isinstance(holder, str) else ""
            raise ValueError(f"{self.what} {name!r} is already registered{by}")
        self._entries[name] = entry
        return entry

    def names(self, *, sort: bool = True) -> list[str]:
        """Every registered name (lazy ones included): sorted, or with ``sort=False`` in the order they were added
        (lazy names not imported yet last)."""
        added = [*self._entries, *(name for name in self.lazy if name not in self._entries)]
        return sorted(added) if sort else added

    def get(self, name: str) -> T:
        """The entry of ``name`` (importing its module first if it is lazy)."""
        if name not in self._entries and name in self.lazy:
            importlib.import_module(self.lazy[name])
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown_error(
                f"unknown {self.what} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.lazy


def _identity(entry: object) -> object:
    """What makes two registrations the same: a class's or function's qualified name (a module reloaded makes new
    objects of the same classes), else the entry itself."""
    qualname = getattr(entry, "__qualname__", None)
    if isinstance(entry, type) or (callable(entry) and qualname is not None):
        return f"{getattr(entry, '__module__', '?')}.{qualname}"
    return entry
