"""The built-in simulator family: named variants of :mod:`msjoe.sim.planted` whose assumptions differ.

Each variant is a role and a :class:`~msjoe.sim.planted.SimulatorConfig`. *Validation* variants are the only ones
any default of the U-Sampler or of stage 1 may be chosen on; *held-out* variants are only reported on
(bench/bench_sim_family.py, bench/RESULTS.md). A new variant is one :func:`register_variant` call below.

``msjoe sim list`` prints them; ``--simulator NAME`` selects one wherever a ``module:factory`` is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

from msjoe.sim.planted import SimulatedItem, SimulatorConfig, generate_item

Role = Literal["validation", "held-out"]

# Evidence-span lengths of LVBench's public annotations (1,547 ``time_reference`` spans in roughly one-hour
# videos; a copy is in the TSPO repository, evaluation/jsons/video_info.meta.jsonl), in seconds = candidates at
# 1 fps: p10 0 s, p25 4 s, median 17 s, p75 75 s, p90 840 s. The 0 and 1 end points are ours (a moment; about
# the longest span that fits beside the others).
LVBENCH_SPAN_QUANTILES = ((0.0, 0.0), (0.1, 0.0), (0.25, 4.0), (0.5, 17.0), (0.75, 75.0), (0.9, 840.0), (1.0, 1200.0))


@dataclass(frozen=True)
class Variant:
    """One named member of the family."""

    name: str
    role: Role
    description: str
    config: SimulatorConfig


class VariantSimulator:
    """A variant behind the public simulator protocol (:mod:`msjoe.sim.protocol`): ``items(n, seed)``.

    Items are pure functions of ``(seed, index)``: the same seed gives the same items on any machine. ``budget`` is
    the frame budget each item's exact uniform pass rate (its ``difficulty``) refers to.
    """

    def __init__(self, variant: Variant, budget: int = 16) -> None:
        self.variant = variant
        self.budget = budget

    @property
    def name(self) -> str:
        return self.variant.name

    def items(self, n: int, seed: int) -> Iterator[SimulatedItem]:
        for index in range(n):
            yield generate_item(self.variant.config, split_seed=seed, index=index, budget=self.budget)

    def __repr__(self) -> str:
        return f"VariantSimulator({self.variant.name!r}, role={self.variant.role!r})"


class MixedSimulator:
    """Items drawn in turn from several variants (item ``i`` is item ``i // m`` of variant ``i % m``)."""

    def __init__(self, names: list[str], budget: int = 16) -> None:
        if not names:
            raise ValueError("a mixed simulator needs at least one variant")
        self.parts = [VariantSimulator(get_variant(name), budget=budget) for name in names]

    def items(self, n: int, seed: int) -> Iterator[SimulatedItem]:
        count = len(self.parts)
        for index in range(n):
            part = self.parts[index % count]
            yield generate_item(part.variant.config, split_seed=seed, index=index // count, budget=part.budget)

    def __repr__(self) -> str:
        return f"MixedSimulator({[part.name for part in self.parts]})"


VALIDATION_MIX = "validation"
"""``--simulator validation``: every validation variant in turn (what the shipped defaults are trained on)."""

_VARIANTS: dict[str, Variant] = {}


def register_variant(name: str, role: Role, description: str, config: SimulatorConfig) -> None:
    if name in _VARIANTS:
        raise ValueError(f"simulator variant {name!r} is already registered")
    _VARIANTS[name] = Variant(name, role, description, config)


def variants(role: Role | None = None) -> list[Variant]:
    """Registered variants in registration order, optionally only one role's."""
    return [v for v in _VARIANTS.values() if role is None or v.role == role]


def get_variant(name: str) -> Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown simulator variant {name!r}; choose one of: {', '.join(_VARIANTS)}") from None


def factory(name: str) -> Callable[[], VariantSimulator]:
    """A zero-argument factory for variant ``name`` (what ``--simulator module:factory`` resolves to)."""
    variant = get_variant(name)
    return lambda: VariantSimulator(variant)


_BASE = SimulatorConfig()

# --- validation: every default is chosen on these ---------------------------------------------------------------
register_variant(
    "planted",
    "validation",
    "the original simulator: 1-3 frames of one span or 2-3 hops, look-alikes, queries of mixed quality, T 300-3600",
    replace(_BASE, min_frames=300),
)
register_variant(
    "shots",
    "validation",
    "strong shot structure and many strong look-alike distractors",
    replace(
        _BASE,
        min_frames=300,
        shot_length=(4.0, 20.0),
        shot_std=(0.012, 0.03),
        max_distractors=8,
        distractor_strength=(1.0, 1.6),
        max_span_fraction=0.05,
    ),
)
register_variant(
    "multi_span",
    "validation",
    "every question needs one frame of each of 2-4 distant events; T 600-7200",
    replace(_BASE, min_frames=600, max_frames=7200, multi_hop_fraction=1.0, max_hops=4),
)
register_variant(
    "relations",
    "validation",
    "3 in 5 questions ask what happens next to a moment (after it, 3 times in 4): the queries describe that moment",
    replace(_BASE, min_frames=300, multi_hop_fraction=0.2, relation_fraction=0.75),
)

# --- held-out: reported only, never tuned on -------------------------------------------------------------------
register_variant(
    "lvbench",
    "held-out",
    "evidence-span lengths drawn from LVBench's measured quantiles (median 17 s, p90 840 s); T 1800-7200",
    replace(
        _BASE,
        min_frames=1800,
        max_frames=7200,
        span_length_quantiles=LVBENCH_SPAN_QUANTILES,
        max_span_frames=1200,
        max_span_fraction=0.15,
        max_distractors=3,
    ),
)
register_variant(
    "weak_queries",
    "held-out",
    "uninformative, flat or partly matching queries: half match nothing, the rest weakly, look-alikes strong",
    replace(
        _BASE,
        min_frames=300,
        uninformative_query_prob=0.5,
        query_quality=(0.1, 0.6),
        cross_match=(0.5, 1.0),
        distractor_strength=(1.0, 1.8),
    ),
)
register_variant(
    "global",
    "held-out",
    "summary questions: one frame from each of 6-12 events spread over the video, queries describe it weakly",
    replace(
        _BASE,
        min_frames=300,
        max_frames=7200,
        multi_hop_fraction=0.0,
        global_fraction=1.0,
        global_spans=(6, 12),
        query_quality=(0.15, 0.6),
        max_span_fraction=0.03,
        coverage_exponent=1.0,
    ),
)
register_variant(
    "relations_long",
    "held-out",
    "relation questions in hour-long videos: LVBench's span lengths, gaps up to 60 s, after or before alike",
    replace(
        get_variant("lvbench").config,
        max_span_fraction=0.1,  # from 0.15: the anchor and its gap must fit beside the other spans
        multi_hop_fraction=0.2,
        relation_fraction=0.75,
        relation_gap=(0, 60),
        relation_after=0.5,
    ),
)
