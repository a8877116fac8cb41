"""Sampler registry. A new sampler is one module with a :class:`Sampler` subclass decorated by
``@register_sampler("name")``, plus one import line at the bottom of this file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from msjoe.registry import Registry
from msjoe.samplers.base import MAX_QUERIES, Sampler, check_similarity

_REGISTRY: Registry[type[Sampler]] = Registry("sampler")
S = TypeVar("S", bound=type[Sampler])


def register_sampler(name: str) -> Callable[[S], S]:
    """Class decorator: make a :class:`Sampler` subclass available as ``get_sampler(name)``."""

    def decorate(cls: S) -> S:
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return decorate


def available_samplers() -> list[str]:
    """Names accepted by :func:`get_sampler`, sorted."""
    return _REGISTRY.names()


def get_sampler(name: str, **options: Any) -> Sampler:
    """Build the sampler registered as ``name`` with keyword ``options`` (see each class for what it takes)."""
    return _REGISTRY.get(name)(**options)


__all__ = ["MAX_QUERIES", "Sampler", "available_samplers", "check_similarity", "get_sampler", "register_sampler"]

# Registrations: one line per sampler module.
from msjoe.samplers import aks as aks  # noqa: E402
from msjoe.samplers import binmax as binmax  # noqa: E402
from msjoe.samplers import bolt as bolt  # noqa: E402
from msjoe.samplers import qframe as qframe  # noqa: E402
from msjoe.samplers import spaced as spaced  # noqa: E402
from msjoe.samplers import topk as topk  # noqa: E402
from msjoe.samplers import uniform as uniform  # noqa: E402
from msjoe.samplers import usampler as usampler  # noqa: E402
