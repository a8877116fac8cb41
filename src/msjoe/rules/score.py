"""Applying a rule set: verdicts per item, accuracy tables, and the report dict every benchmark returns.

Items are judged in order, because a ``"random"`` fallback draws from one seeded stream the way the official
code draws from Python's global ``random`` (so verdicts depend on item order, as they do there). The report keeps
the ids behind every adjustment (unparsed, random fallback, missing replies, replies matching no item), so no
reply or item is dropped silently.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from msjoe.rules.base import Question, RuleSet, official_answer, option_letters

ItemStatus = Literal["ok", "unparsed", "random", "missing"]


@dataclass(frozen=True)
class ScoredItem:
    """The outcome for one item.

    Attributes:
        id: the item's id.
        answer: the ground truth as the rule set compares it.
        reply: the raw reply, ``None`` when there is none.
        extracted: what the rule set read from the reply (``None``: nothing).
        chosen: what was compared with ``answer``: ``extracted``, or the random fallback.
        correct: ``chosen == answer``.
        counted: whether the item is in the denominators.
        status: ``"ok"``, ``"unparsed"``, ``"random"`` (unparsed, random fallback) or ``"missing"`` (no reply).
    """

    id: str
    answer: str | None
    reply: str | None
    extracted: str | None
    chosen: str | None
    correct: bool
    counted: bool
    status: ItemStatus

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "answer": self.answer,
            "extracted": self.extracted,
            "chosen": self.chosen,
            "correct": self.correct,
            "counted": self.counted,
            "status": self.status,
        }


@dataclass(frozen=True)
class Tally:
    """Correct and total counts of a group; ``accuracy`` is their ratio in [0, 1], ``None`` for an empty group."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.correct + other.correct, self.total + other.total)

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy}


def score_replies(
    questions: Sequence[Question], replies: Mapping[str, str], rules: RuleSet, *, seed: int | None = None
) -> tuple[list[ScoredItem], list[str]]:
    """Judge every question's reply with ``rules``; return the verdicts (in question order) and the reply ids
    that match no question. ``seed`` overrides ``rules.seed`` for the random fallback.

    Raises ``ValueError`` for a question without ground truth or a reply that is not a string.
    """
    no_answer = [q.id for q in questions if official_answer(q, as_stored=rules.answer_as_stored) is None]
    if no_answer:
        raise ValueError(
            f"{len(no_answer)} items have no ground-truth answer (a test split?), e.g. {no_answer[:3]}; "
            "they cannot be scored locally"
        )
    draws = random.Random(rules.seed if seed is None else seed)
    known = {q.id for q in questions}
    unknown = [key for key in replies if key not in known]
    scored = []
    for question in questions:
        truth = official_answer(question, as_stored=rules.answer_as_stored)
        reply = replies.get(question.id)
        if reply is not None and not isinstance(reply, str):
            raise ValueError(f"the reply for item {question.id!r} must be a string, got {type(reply).__name__}")
        status: ItemStatus = "ok"
        if reply is None:
            if rules.missing != "as_empty":
                counted = rules.missing == "wrong"
                scored.append(ScoredItem(question.id, truth, None, None, None, False, counted, "missing"))
                continue
            status = "missing"  # judged as the empty reply, as a script reading every reply would
        extracted = rules.read(reply or "", question)
        if extracted is not None:
            scored.append(ScoredItem(question.id, truth, reply, extracted, extracted, extracted == truth, True, status))
        elif rules.unparsed == "random":
            chosen = draws.choice(option_letters(len(question.options)))
            status = "random" if status == "ok" else status
            scored.append(ScoredItem(question.id, truth, reply, None, chosen, chosen == truth, True, status))
        else:
            counted = rules.unparsed == "wrong"
            status = "unparsed" if status == "ok" else status
            scored.append(ScoredItem(question.id, truth, reply, None, None, False, counted, status))
    return scored, unknown


def tally(scored: Iterable[ScoredItem]) -> Tally:
    """Correct/total over the counted items."""
    counted = [s for s in scored if s.counted]
    return Tally(sum(s.correct for s in counted), len(counted))


def breakdown(
    questions: Sequence[Question],
    scored: Sequence[ScoredItem],
    groups_of: Callable[[Question], Iterable[str]],
    order: Sequence[str] = (),
    *,
    repeated_groups: Literal["once", "each"] = "once",
) -> dict[str, Tally]:
    """Accuracy per group; an item counts in each group ``groups_of(item)`` names (several for LVBench's
    multi-type questions), once per naming with ``repeated_groups="each"``. Groups in ``order`` come first (the
    official listing order), others sorted after."""
    tallies: dict[str, Tally] = {}
    for question, result in zip(questions, scored, strict=True):
        if not result.counted:
            continue
        groups = list(groups_of(question))
        for group in groups if repeated_groups == "each" else dict.fromkeys(groups):
            tallies[group] = tallies.get(group, Tally()) + Tally(int(result.correct), 1)
    first = [group for group in order if group in tallies]
    rest = sorted(set(tallies) - set(first))
    return {group: tallies[group] for group in (*first, *rest)}


def category_values(name: str) -> Callable[[Question], list[str]]:
    """``groups_of`` for :func:`breakdown`: the item's ``categories[name]`` (a value or list of values)."""

    def groups_of(question: Question) -> list[str]:
        value = question.categories.get(name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)

    return groups_of


def mean_accuracy(tallies: Mapping[str, Tally], over: int | None = None) -> float | None:
    """The unweighted mean of the groups' accuracies (MLVU's M-Avg): over the non-empty groups, or divided by a
    fixed ``over`` groups (an absent group then counts as 0, as lmms-eval's MLVU aggregation does)."""
    values = [t.accuracy for t in tallies.values() if t.accuracy is not None]
    if over is not None:
        return sum(values) / over
    return sum(values) / len(values) if values else None


def build_report(
    benchmark: str,
    questions: Sequence[Question],
    scored: Sequence[ScoredItem],
    unknown_reply_ids: Sequence[str],
    rules: RuleSet,
    breakdowns: Mapping[str, Mapping[str, Tally]],
    *,
    seed: int | None = None,
    headline: tuple[str, float | None] | None = None,
) -> dict[str, Any]:
    """The report dict shared by all benchmarks (JSON-serialisable; accuracies in [0, 1]).

    Keys: ``benchmark``; ``rules`` (the rule set, its sources and policies); ``headline`` ``{"metric",
    "value"}`` (overall accuracy unless given); ``overall`` ``{"correct", "total", "accuracy"}``; ``breakdowns``
    ``{name: {group: {...}}}``; ``counts`` (items, counted, unparsed, random_fallback, missing_predictions,
    unknown_prediction_ids); ``ids`` (the ids behind those counts, so every adjustment is visible); ``items``
    (one record per item, for error analysis).
    """
    overall = tally(scored)
    by_status = {status: [s.id for s in scored if s.status == status] for status in ("unparsed", "random", "missing")}
    metric, value = headline if headline is not None else ("accuracy", overall.accuracy)
    rules_record = rules.to_dict()
    if seed is not None and rules.unparsed == "random":
        rules_record["seed"] = seed
    return {
        "benchmark": benchmark,
        "rules": rules_record,
        "headline": {"metric": metric, "value": value},
        "overall": overall.to_dict(),
        "breakdowns": {name: {g: t.to_dict() for g, t in table.items()} for name, table in breakdowns.items()},
        "counts": {
            "items": len(questions),
            "counted": overall.total,
            "unparsed": len(by_status["unparsed"]),
            "random_fallback": len(by_status["random"]),
            "missing_predictions": len(by_status["missing"]),
            "unknown_prediction_ids": len(unknown_reply_ids),
        },
        "ids": {
            "unparsed": by_status["unparsed"],
            "random_fallback": by_status["random"],
            "missing_predictions": by_status["missing"],
            "unknown_predictions": list(unknown_reply_ids),
        },
        "items": [s.to_dict() for s in scored],
    }
