"""``msjoe data filter``: the paper's rules (drop easy items by the base model's pass rate) and the usual ones,
each off unless asked for, each reporting how many items it removed.

Rules run in a fixed order, each on what the earlier ones kept (so a count is what that rule removed, never an
item twice):

1. ``options``: option sanity: no answer letter, or two options with the same text once case, spacing and
   punctuation are ignored (``"Red."`` and ``"red"``).
2. ``duration``: the video's length outside ``[min_duration, max_duration]`` seconds; an item with no known
   duration is removed too (``msjoe data import`` probes durations).
3. ``duplicates``: a question about the same video as an earlier kept item whose question text is the same, or
   nearly so (word-set Jaccard similarity ``>= near_duplicate``), once normalised as above; the first is kept.
4. ``pass_rate``: the difficulty ``c`` outside ``[min_difficulty, max_difficulty]``, or ``c = 1`` with
   ``drop_always_correct`` (answered correctly at every uniform draw: the reward has nothing to teach); an item
   never calibrated is removed too.
5. ``blind``: answered correctly with no frames at all (``meta["blind"]["pass_rate"] > max_blind``, from
   ``msjoe data calibrate --blind``): the question does not need the video. An item without a blind rate is an
   error, not a silent keep.
6. ``letter_balance``: down-sample so every answer letter is equally frequent among items with the same number
   of options (seeded): a model must not learn that "A" is right most of the time.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from msjoe.checks import Bounds, check_fields
from msjoe.data.schema import QAItem

__all__ = [
    "RULES",
    "FilterConfig",
    "FilterReport",
    "RuleResult",
    "blind_pass_rate",
    "filter_items",
    "letter_counts",
    "normalise_text",
]

RULES = ("options", "duration", "duplicates", "pass_rate", "blind", "letter_balance")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


@dataclass(frozen=True)
class FilterConfig:
    """Which rules run (each ``None``/``False`` leaves its rule out).

    Attributes:
        option_sanity: rule 1.
        min_duration, max_duration: rule 2 bounds in seconds (either may be ``None``).
        dedupe: rule 3.
        near_duplicate: rule 3's Jaccard threshold in (0, 1]; 1 keeps exact duplicates only.
        min_difficulty, max_difficulty: rule 4's band (the paper keeps items its base model does not always get
            right; a band also drops items it never gets right, often wrong labels).
        drop_always_correct: rule 4: remove ``c = 1``.
        drop_blind: rule 5.
        max_blind: rule 5's threshold: remove items whose blind pass rate is above it (0: any correct blind
            answer removes the item).
        balance_letters: rule 6.
        seed: rule 6's draw.
    """

    option_sanity: bool = False
    min_duration: float | None = None
    max_duration: float | None = None
    dedupe: bool = False
    near_duplicate: Annotated[float, Bounds(0, 1, low_open=True)] = 0.9
    min_difficulty: float | None = None
    max_difficulty: float | None = None
    drop_always_correct: bool = False
    drop_blind: bool = False
    max_blind: Annotated[float, Bounds(0, 1)] = 0.0
    balance_letters: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation
        for low, high, what in (
            (self.min_duration, self.max_duration, "duration"),
            (self.min_difficulty, self.max_difficulty, "difficulty"),
        ):
            if low is not None and high is not None and low > high:
                raise ValueError(f"min {what} {low} is above max {what} {high}")


@dataclass
class RuleResult:
    """What one rule did: its name, what it checks, and the items it removed (with a reason each)."""

    rule: str
    description: str
    removed: list[tuple[QAItem, str]] = field(default_factory=list)


@dataclass
class FilterReport:
    """The outcome of :func:`filter_items`: kept items in input order and each rule's removals."""

    kept: list[QAItem]
    rules: list[RuleResult]
    total: int

    @property
    def removed(self) -> int:
        return self.total - len(self.kept)

    def counts(self) -> dict[str, int]:
        """Rule name -> items it removed (rules that ran only)."""
        return {result.rule: len(result.removed) for result in self.rules}


def normalise_text(text: str) -> str:
    """Lower case, punctuation removed, runs of spaces folded: the form texts are compared in."""
    return " ".join(_PUNCTUATION.sub(" ", text.casefold()).split())


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _option_problem(item: QAItem) -> str | None:
    if item.answer is None:
        return "no answer letter"
    seen: dict[str, int] = {}
    for index, option in enumerate(item.options):
        key = normalise_text(option)
        if key in seen:
            letters = item.letters
            return f"options {letters[seen[key]]} and {letters[index]} are the same ({option!r})"
        seen[key] = index
    return None


def _duration_problem(item: QAItem, config: FilterConfig) -> str | None:
    if item.duration is None:
        return "no known duration"
    if config.min_duration is not None and item.duration < config.min_duration:
        return f"{item.duration:g} s is shorter than {config.min_duration:g} s"
    if config.max_duration is not None and item.duration > config.max_duration:
        return f"{item.duration:g} s is longer than {config.max_duration:g} s"
    return None


def _pass_rate_problem(item: QAItem, config: FilterConfig) -> str | None:
    c = item.difficulty
    if c is None:
        return "no difficulty (run msjoe data calibrate)"
    if config.drop_always_correct and c >= 1.0:
        return "answered correctly at every uniform draw (c = 1)"
    if config.min_difficulty is not None and c < config.min_difficulty:
        return f"c = {c:g} is below {config.min_difficulty:g}"
    if config.max_difficulty is not None and c > config.max_difficulty:
        return f"c = {c:g} is above {config.max_difficulty:g}"
    return None


def blind_pass_rate(item: QAItem) -> float | None:
    """The blind pass rate ``msjoe data calibrate --blind`` stored, or ``None``."""
    blind = item.meta.get("blind")
    rate = blind.get("pass_rate") if isinstance(blind, dict) else None
    return float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None


def _run(
    name: str, description: str, items: list[QAItem], problem: Callable[[QAItem], str | None]
) -> tuple[list[QAItem], RuleResult]:
    result = RuleResult(name, description)
    kept = []
    for item in items:
        reason = problem(item)
        if reason is None:
            kept.append(item)
        else:
            result.removed.append((item, reason))
    return kept, result


def _dedupe(items: list[QAItem], threshold: float) -> tuple[list[QAItem], RuleResult]:
    result = RuleResult("duplicates", f"same or near-duplicate question per video (Jaccard >= {threshold:g})")
    kept_by_video: dict[str, list[tuple[QAItem, str, set[str]]]] = defaultdict(list)
    kept = []
    for item in items:
        text = normalise_text(item.question)
        words = set(text.split())
        earlier = kept_by_video[item.video_key]
        match = next(
            (
                first
                for first, first_text, first_words in earlier
                if first_text == text or _jaccard(words, first_words) >= threshold
            ),
            None,
        )
        if match is not None:
            result.removed.append((item, f"duplicates item {match.id!r} about the same video"))
            continue
        earlier.append((item, text, words))
        kept.append(item)
    return kept, result


def _balance(items: list[QAItem], seed: int) -> tuple[list[QAItem], RuleResult]:
    """Per option count, keep ``min`` items of every letter (a seeded draw); letters never used do not count
    (a 4-option set with no ``D`` answers is balanced over A-C)."""
    result = RuleResult("letter_balance", "down-sample to equally frequent answer letters per option count")
    rng = random.Random(seed)
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        groups[len(item.options), item.answer or ""].append(position)
    drop: set[int] = set()
    for count in sorted({n for n, _ in groups}):
        letters = {letter: positions for (n, letter), positions in groups.items() if n == count}
        target = min(len(positions) for positions in letters.values())
        for letter in sorted(letters):
            positions = letters[letter]
            if len(positions) > target:
                drop.update(rng.sample(positions, len(positions) - target))
    for position, item in enumerate(items):
        if position in drop:
            n = len(item.options)
            result.removed.append((item, f"answer {item.answer} is over-represented among {n}-option questions"))
    return [item for position, item in enumerate(items) if position not in drop], result


def filter_items(items: Sequence[QAItem], config: FilterConfig) -> FilterReport:
    """Apply the rules ``config`` turns on, in the order of the module notes; see :class:`FilterReport`.

    Raises ``ValueError`` when ``drop_blind`` is on and an item that reaches the rule has no blind pass rate."""
    kept = list(items)
    results: list[RuleResult] = []

    def apply(name: str, description: str, problem: Callable[[QAItem], str | None]) -> None:
        nonlocal kept
        kept, result = _run(name, description, kept, problem)
        results.append(result)

    if config.option_sanity:
        apply("options", "no answer letter, or two options with the same text", _option_problem)
    if config.min_duration is not None or config.max_duration is not None:
        bounds = f"[{config.min_duration if config.min_duration is not None else '-inf'}, "
        bounds += f"{config.max_duration if config.max_duration is not None else 'inf'}] s"
        apply("duration", f"video duration outside {bounds}", lambda item: _duration_problem(item, config))
    if config.dedupe:
        kept, result = _dedupe(kept, config.near_duplicate)
        results.append(result)
    if config.drop_always_correct or config.min_difficulty is not None or config.max_difficulty is not None:
        apply("pass_rate", "base-model pass rate with uniform frames", lambda item: _pass_rate_problem(item, config))
    if config.drop_blind:
        unrated = [item.id for item in kept if blind_pass_rate(item) is None]
        if unrated:
            shown = ", ".join(unrated[:5]) + (f" and {len(unrated) - 5} more" if len(unrated) > 5 else "")
            raise ValueError(
                f"{len(unrated)} items have no blind pass rate ({shown}): rate them with msjoe data calibrate --blind"
            )
        apply(
            "blind",
            f"answered without frames (blind pass rate > {config.max_blind:g})",
            lambda item: (
                f"blind pass rate {blind_pass_rate(item):g}" if blind_pass_rate(item) > config.max_blind else None
            ),
        )
    if config.balance_letters:
        kept, result = _balance(kept, config.seed)
        results.append(result)
    return FilterReport(kept, results, len(items))


def letter_counts(items: Sequence[QAItem]) -> Counter[str]:
    """How often each answer letter is correct (items without an answer counted under ``"-"``)."""
    return Counter(item.answer or "-" for item in items)
