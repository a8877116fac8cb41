"""Scoring rule sets: how each benchmark's official code (and lmms-eval, and msjoe) turns replies into scores.

>>> from msjoe.rules import get_rules, available_rules
>>> available_rules("videomme")        # the default, the benchmark's current official code, first
['videomme', 'videomme_legacy', 'videomme_lmms_eval', 'msjoe']
>>> get_rules("videomme").heading()    # what every report prints above its numbers

A rule set is one small module defining ``RULES`` (see :class:`msjoe.rules.base.RuleSet`), registered with one
line at the bottom of this file. Each cites the official file and commit it follows; moving to a newer official
script means a new commit here, reviewed with its tests. The benchmark modules
(:mod:`msjoe.data.benchmarks`) apply rule sets with :mod:`msjoe.rules.score`.
"""

from __future__ import annotations

from msjoe.registry import Registry
from msjoe.rules.base import RuleSet, Source

_REGISTRIES: dict[str, Registry[RuleSet]] = {}
"""One registry per benchmark: a rule set's name is unique within its benchmark (each has an ``msjoe``)."""
_DEFAULTS: dict[str, str] = {}


def register_rules(rules: RuleSet, *, default: bool = False) -> RuleSet:
    """Make ``rules`` available as ``get_rules(rules.benchmark, rules.name)`` (and as the benchmark's default)."""
    held_default = _DEFAULTS.get(rules.benchmark)
    if default and held_default not in (None, rules.name):
        raise ValueError(f"{rules.benchmark!r} already has a default rule set, {held_default!r}")
    if rules.benchmark not in _REGISTRIES:
        _REGISTRIES[rules.benchmark] = Registry(f"{rules.benchmark} rule set")
    _REGISTRIES[rules.benchmark].add(rules.name, rules)
    if default:
        _DEFAULTS[rules.benchmark] = rules.name
    return rules


def available_rules(benchmark: str) -> list[str]:
    """The rule sets of ``benchmark``: its default first, then the others in registration order."""
    if benchmark not in _REGISTRIES:
        return []
    default = _DEFAULTS.get(benchmark)
    names = _REGISTRIES[benchmark].names(sort=False)
    return ([default] if default else []) + [name for name in names if name != default]


def get_rules(benchmark: str, name: str | None = None) -> RuleSet:
    """The rule set ``name`` of ``benchmark`` (``None``: its default, the benchmark's current official code)."""
    if benchmark not in _REGISTRIES:
        raise ValueError(f"no rule sets for benchmark {benchmark!r}")
    if name is None and benchmark not in _DEFAULTS:
        raise ValueError(f"{benchmark!r} has no default rule set; name one of: {', '.join(available_rules(benchmark))}")
    if name is not None and name not in _REGISTRIES[benchmark]:  # listed default first, unlike Registry.get
        known = ", ".join(available_rules(benchmark))
        raise ValueError(f"unknown rule set {name!r} for {benchmark}; choose one of: {known}")
    return _REGISTRIES[benchmark].get(_DEFAULTS[benchmark] if name is None else name)


__all__ = ["RuleSet", "Source", "available_rules", "get_rules", "register_rules"]


def _register_builtins() -> None:
    from msjoe.rules import (
        longvideobench,
        longvideobench_mmmu,
        lvbench,
        lvbench_exact,
        lvbench_lmms_eval,
        mlvu,
        mlvu_lmms_eval,
        mlvu_lmms_eval_legacy,
        mlvu_videochat2,
        msjoe,
        videomme,
        videomme_legacy,
        videomme_lmms_eval,
    )

    register_rules(videomme.RULES, default=True)
    register_rules(videomme_legacy.RULES)
    register_rules(videomme_lmms_eval.RULES)
    register_rules(longvideobench.RULES, default=True)
    register_rules(longvideobench_mmmu.RULES)
    register_rules(lvbench.RULES, default=True)
    register_rules(lvbench_exact.RULES)
    register_rules(lvbench_lmms_eval.RULES)
    register_rules(mlvu.RULES, default=True)
    register_rules(mlvu_videochat2.RULES)
    register_rules(mlvu_lmms_eval.RULES)
    register_rules(mlvu_lmms_eval_legacy.RULES)
    for benchmark in ("videomme", "longvideobench", "lvbench", "mlvu"):
        register_rules(msjoe.rules_for(benchmark))


_register_builtins()
