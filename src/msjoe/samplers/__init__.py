"""Sampler registry. A new sampler is one module with a :class:`Sampler` subclass decorated by
``@register_sampler("name")``, plus one import line at the bottom of this file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from msjoe.samplers.base import MAX_QUERIES, Sampler, check_similarity

_REGISTRY: dict[str, type[Sampler]] = {}
S = TypeVar("S", bound=type[Sampler])


def register_sampler(name: str) -> Callable[[S], S]:
    """Class decorator: make a :class:`Sampler` subclass available as ``get_sampler(name)``."""

    def decorate(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_samplers() -> list[str]:
    """Names accepted by :func:`get_sampler`, sorted."""
    return sorted(_REGISTRY)


def get_sampler(name: str, **options: Any) -> Sampler:
    """Build the sampler registered as ``name`` with keyword ``options`` (see each class for what it takes)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(available_samplers())}") from None
    return cls(**options)


__all__ = ["MAX_QUERIES", "Sampler", "available_samplers", "check_similarity", "get_sampler", "register_sampler"]

# Registrations: one line per sampler module.
from msjoe.samplers import aks as aks  # noqa: E402
from msjoe.samplers import binmax as binmax  # noqa: E402
from msjoe.samplers import bolt as bolt  # noqa: E402
from msjoe.samplers import qframe as qframe  # noqa: E402
from msjoe.samplers import topk as topk  # noqa: E402
from msjoe.samplers import uniform as uniform  # noqa: E402
from msjoe.samplers import usampler as usampler  # noqa: E402
