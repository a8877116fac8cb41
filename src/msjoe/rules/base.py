"""What a rule set is: how one benchmark's official code turns a reply into a verdict, and where that code lives.

A rule set fixes everything that changes a score, so that two numbers made with the same rule set are comparable
and a report can say exactly how its numbers were made:

- ``read``: the string the official code extracts from a reply (usually an option letter; ``None`` when it
  finds nothing);
- ``unparsed``: what a reply counts as when ``read`` finds nothing (``"wrong"``: counted, incorrect;
  ``"exclude"``: left out of every denominator; ``"random"``: a random option, drawn as the official code draws
  it);
- ``missing``: what an item without any reply counts as (``"wrong"``, ``"exclude"``, or ``"as_empty"``: scored as
  the empty reply, which is how a script that reads a reply for every question treats one it never got);
- ``repeated_groups``: whether an item naming a group twice (LVBench's question types) counts twice in it;
- ``mean_over``: for benchmarks whose headline is a mean of per-group accuracies (MLVU), the fixed number of
  groups it divides by (``None``: the groups that have items);
- ``answer_as_stored``: whether replies are compared with the answer exactly as the annotation file stores it
  (whitespace included), as LVBench's ``compute_accuracy.py`` does, rather than with the option letter;
- ``keeps_unrunnable_rows``: whether annotation rows msjoe cannot ask (empty options, an answer that is not an
  option) are scored, as the official code scores them.

Every rule set cites the exact source it follows (:class:`Source`: repository, path, commit), so moving to a
newer official script is a deliberate, reviewed change. Rule sets are reimplemented from the cited code, not
copied; quirks that change verdicts are reproduced and commented where they are.

This package sits below both the benchmark loaders (:mod:`msjoe.data.benchmarks`) and the evaluation harness
(:mod:`msjoe.eval`): it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from msjoe.checks import check_fields

UnparsedPolicy = Literal["wrong", "exclude", "random"]
MissingPolicy = Literal["wrong", "exclude", "as_empty"]


class Question(Protocol):
    """What scoring needs of an annotation row: a :class:`msjoe.data.schema.QAItem`, or a row msjoe cannot ask but
    the official code scores (:class:`msjoe.data.benchmarks.base.UnrunnableRow`)."""

    @property
    def id(self) -> str: ...

    @property
    def answer(self) -> str | None: ...

    @property
    def options(self) -> tuple[str, ...]: ...

    @property
    def categories(self) -> Mapping[str, Any]: ...

    @property
    def meta(self) -> Mapping[str, Any]: ...


def official_answer(question: Question, *, as_stored: bool = True) -> str | None:
    """The ground truth a rule set compares with: with ``as_stored``, ``meta["answer_as_stored"]`` when the loader
    kept the value stored in the annotation file (LVBench's ``"A "`` with its trailing space, which LVBench's exact
    comparison never matches); else the answer letter."""
    stored = question.meta.get("answer_as_stored")
    return stored if as_stored and isinstance(stored, str) else question.answer


def option_letters(count: int) -> list[str]:
    """``["A", "B", ...]`` for ``count`` options, as ``chr(ord("A") + i)`` in every official script."""
    return [chr(ord("A") + i) for i in range(count)]


@dataclass(frozen=True)
class Source:
    """One file of official code a rule set follows.

    Attributes:
        repository: ``owner/name`` on GitHub.
        path: the file in that repository.
        commit: the full commit the rule set was checked against.
        functions: the functions (or lines) it follows, for the reader who opens the file.
    """

    repository: str
    path: str
    commit: str
    functions: str = ""

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repository}/blob/{self.commit}/{self.path}"

    def cite(self) -> str:
        """``owner/name path @ commit[:8]`` (the functions in parentheses)."""
        what = f" ({self.functions})" if self.functions else ""
        return f"{self.repository} {self.path} @ {self.commit[:8]}{what}"

    def to_dict(self) -> dict[str, str]:
        return {
            "repository": self.repository,
            "path": self.path,
            "commit": self.commit,
            "functions": self.functions,
            "url": self.url,
        }


Reader = Callable[[str, Question], str | None]
"""``(reply, question) -> extracted string or None``."""


@dataclass(frozen=True)
class RuleSet:
    """A named way of scoring one benchmark (see the module docstring for each field's meaning).

    Attributes:
        benchmark: the benchmark's registry name.
        name: the rule set's name, unique within its benchmark (``"videomme"``, ``"videomme_legacy"``...).
        summary: one sentence: what it reads from a reply and how the numbers are averaged.
        sources: the official code it follows; empty for msjoe's own rule sets.
        read: the extraction.
        unparsed: what a reply ``read`` finds nothing in counts as.
        missing: what an item without a reply counts as.
        repeated_groups: ``"each"``: an item naming a group twice counts twice in it; ``"once"``: once.
        mean_over: the fixed number of groups a mean-of-groups headline divides by; ``None``: groups with items.
        answer_as_stored: compare with the stored answer string, not the option letter.
        keeps_unrunnable_rows: score rows msjoe cannot ask (as the official code does).
        seed: seeds the ``"random"`` fallback (draws follow item order, as in the official code).
        notes: what the rule set reproduces beyond the extraction, or knowingly does not.
    """

    benchmark: str
    name: str
    summary: str
    sources: tuple[Source, ...]
    read: Reader
    unparsed: UnparsedPolicy
    missing: MissingPolicy
    repeated_groups: Literal["once", "each"] = "once"
    mean_over: int | None = None
    answer_as_stored: bool = False
    keeps_unrunnable_rows: bool = False
    seed: int = 0
    notes: str = ""

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type (the policies: their Literal values), from its annotation

    @property
    def official(self) -> bool:
        """Whether the rule set follows official code (msjoe's own readings cite none)."""
        return bool(self.sources)

    def heading(self) -> str:
        """One line for report headings: the name and what it follows."""
        follows = "; ".join(source.cite() for source in self.sources) if self.sources else "msjoe's own reading"
        return f"rule set `{self.name}` ({follows})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "benchmark": self.benchmark,
            "summary": self.summary,
            "sources": [source.to_dict() for source in self.sources],
            "unparsed": self.unparsed,
            "missing": self.missing,
            "repeated_groups": self.repeated_groups,
            "mean_over": self.mean_over,
            "answer_as_stored": self.answer_as_stored,
            "keeps_unrunnable_rows": self.keeps_unrunnable_rows,
            "seed": self.seed if self.unparsed == "random" else None,
            "notes": self.notes,
        }
