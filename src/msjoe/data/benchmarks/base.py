"""What every benchmark module shares: the load result, annotation lookup (local or Hugging Face Hub) and video
lookup.

A benchmark module provides ``load(annotations, videos) -> LoadResult`` and ``score(items, predictions, ...) ->
dict`` and registers a :class:`BenchmarkSpec` (see :mod:`msjoe.data.benchmarks`). Scoring applies a rule set of
:mod:`msjoe.rules` (:func:`score_with_rules`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msjoe.data.schema import QAItem
from msjoe.rules import RuleSet, get_rules
from msjoe.rules.base import Question
from msjoe.rules.score import ScoredItem, Tally, build_report, score_replies

VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".mov", ".avi")

# "owner/name" as the Hub spells dataset ids; a string with a data-file suffix is never taken for one.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv")


@dataclass(frozen=True)
class SkippedRow:
    """An annotation row that could not be turned into a :class:`QAItem`.

    Attributes:
        location: where it is, e.g. ``"lvb_val.json[12]"`` or ``"video_info.meta.jsonl:3 qa[2]"``.
        reason: what is wrong with it, naming the field.
    """

    location: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"location": self.location, "reason": self.reason}


@dataclass(frozen=True)
class UnrunnableRow:
    """An annotation row msjoe cannot ask (its options are empty, or its answer is not among them) that the
    benchmark's official code nevertheless scores; rule sets with ``keeps_unrunnable_rows`` score it, the others
    leave it out. It has the attributes scoring reads (:class:`msjoe.rules.base.Question`).

    Attributes:
        id: the row's id, as a :class:`QAItem` of it would have.
        answer: the ground truth as the official code compares it (MLVU's ``"@"`` for an answer that is not a
            candidate).
        options: the option texts as stored (may be empty strings, or none).
        categories: breakdown fields, as a :class:`QAItem` would have them.
        meta: other fields (``answer_as_stored``...).
        location: where the row is, as in :class:`SkippedRow`.
        reason: why msjoe cannot ask it.
    """

    id: str
    answer: str
    options: tuple[str, ...] = ()
    categories: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    location: str = ""
    reason: str = ""


@dataclass(frozen=True)
class LoadResult:
    """A benchmark converted to :class:`QAItem` s.

    Attributes:
        benchmark: the benchmark's registry name.
        items: the questions ready to run (their video file exists, or no video folder was given).
        missing: well-formed questions whose video file is absent; never an error, so a partial download can
            still be evaluated and the report says what was left out.
        skipped: malformed rows, with reasons.
        unrunnable: rows among ``skipped`` that the official code still scores (see :class:`UnrunnableRow`).
    """

    benchmark: str
    items: list[QAItem]
    missing: list[QAItem] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    unrunnable: list[UnrunnableRow] = field(default_factory=list)

    @property
    def missing_videos(self) -> list[str]:
        """The distinct video paths that were looked for and not found, sorted."""
        return sorted({item.video for item in self.missing})

    def summary(self) -> dict[str, Any]:
        """Counts and lists for a report (JSON-serialisable)."""
        return {
            "benchmark": self.benchmark,
            "items": len(self.items),
            "missing_items": len(self.missing),
            "missing_videos": self.missing_videos,
            "skipped_rows": [row.to_dict() for row in self.skipped],
            "unrunnable_rows": [row.id for row in self.unrunnable],
        }


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark.

    Attributes:
        name: registry name (``"videomme"``...).
        load: ``load(annotations, videos) -> LoadResult``.
        score: ``score(items, predictions, *, rules=None, seed=None, unrunnable=()) -> report dict``.
        hf_dataset_id: the Hub dataset holding the annotation files, accepted by ``load`` as ``annotations``.
        description: one line for listings.
    """

    name: str
    load: Callable[..., LoadResult]
    score: Callable[..., dict[str, Any]]
    hf_dataset_id: str
    description: str


class RowError(ValueError):
    """Raised inside a loader for one malformed row; the loader records it as a :class:`SkippedRow`."""


def resolve_annotations(annotations: str | Path, *, hf_patterns: Sequence[str]) -> Path:
    """A local path for ``annotations``: the path itself when it exists, else a Hub dataset id whose matching
    files (``hf_patterns``, fnmatch style) are downloaded to the Hugging Face cache.

    Raises ``FileNotFoundError`` when the path does not exist and it is not a reachable Hub dataset.
    """
    path = Path(annotations).expanduser()
    if path.exists():
        return path
    text = str(annotations)
    if not _HUB_ID.fullmatch(text) or text.endswith(_FILE_SUFFIXES):
        raise FileNotFoundError(f"annotation file or folder not found: {path}")
    from huggingface_hub import constants, snapshot_download  # only needed for Hub ids

    from msjoe.hub import hub_unreachable

    # Without a reachable hub, snapshot_download retries for about a minute before it falls back to the cache: ask
    # the cache alone at once instead (a dataset downloaded earlier still loads offline).
    unreachable = None if constants.is_offline_mode() else hub_unreachable()
    try:
        return Path(
            snapshot_download(
                repo_id=text,
                repo_type="dataset",
                allow_patterns=list(hf_patterns),
                local_files_only=unreachable is not None,
            )
        )
    except Exception as err:  # offline, gated, unknown id...: one clear message, the cause chained
        if unreachable:
            raise FileNotFoundError(
                f"annotations {text!r} is not a local path nor a dataset in the local Hugging Face cache "
                f"({constants.HF_HUB_CACHE}), and the hub {constants.ENDPOINT} is unreachable ({unreachable}); pass "
                "the annotation file or folder"
            ) from err
        raise FileNotFoundError(
            f"annotations {text!r} is not a local path, and fetching it as a Hugging Face dataset failed: "
            f"{type(err).__name__}: {err}"
        ) from err


def find_files(folder: Path, patterns: Iterable[str], what: str) -> list[Path]:
    """Files under ``folder`` matching the first glob pattern that matches anything, sorted; raises
    ``FileNotFoundError`` naming ``what`` when none does."""
    patterns = list(patterns)
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found
    raise FileNotFoundError(f"no {what} in {folder} (looked for {', '.join(patterns)})")


class VideoFinder:
    """Finds a question's video file among candidate relative paths under a video folder (with a cache, since
    many questions share a video). Without a folder every video counts as present and keeps its first
    candidate path, so annotations can be scored without the videos."""

    def __init__(self, videos: str | Path | None) -> None:
        self.root = Path(videos).expanduser() if videos is not None else None
        if self.root is not None and not self.root.is_dir():
            raise FileNotFoundError(f"video folder not found: {self.root}")
        self._cache: dict[tuple[str, ...], tuple[str, bool]] = {}

    def find(self, candidates: Sequence[str]) -> tuple[str, bool]:
        """``(path, exists)``: the first candidate that exists, else the first candidate and ``False``."""
        key = tuple(candidates)
        if key not in self._cache:
            self._cache[key] = self._lookup(key)
        return self._cache[key]

    def _lookup(self, candidates: tuple[str, ...]) -> tuple[str, bool]:
        if self.root is None:
            return candidates[0], True
        for candidate in candidates:
            path = self.root / candidate
            if path.is_file():
                return str(path), True
        return str(self.root / candidates[0]), False


def with_extensions(stem: str) -> list[str]:
    """``stem`` with each of :data:`VIDEO_EXTENSIONS` (for annotations that name a video without its file)."""
    return [stem + extension for extension in VIDEO_EXTENSIONS]


def split_by_video(
    benchmark: str,
    rows: Iterable[tuple[QAItem, bool]],
    skipped: list[SkippedRow],
    unrunnable: Sequence[UnrunnableRow] = (),
) -> LoadResult:
    """A :class:`LoadResult` from ``(item, video_exists)`` pairs; later duplicates of an id are skipped."""
    items: list[QAItem] = []
    missing: list[QAItem] = []
    seen: set[str] = set()
    for item, exists in rows:
        if item.id in seen:
            skipped.append(SkippedRow(f"id {item.id!r}", "duplicate id; the first occurrence is kept"))
            continue
        seen.add(item.id)
        (items if exists else missing).append(item)
    kept = [row for row in unrunnable if row.id not in seen]
    return LoadResult(benchmark, items, missing, skipped, kept)


def require(record: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``record[name]`` checked to be present and of type ``kind``; raises :class:`RowError` naming the field."""
    if name not in record or record[name] is None:
        raise RowError(f"field {name!r} is missing")
    value = record[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RowError(f"field {name!r} must be {_kind_name(kind)}, got bool")
    if not isinstance(value, kind):
        raise RowError(f"field {name!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise RowError(f"field {name!r} is empty")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# ------------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------------
Tables = Callable[[Sequence[Question], Sequence[ScoredItem], RuleSet], tuple[dict[str, dict[str, Tally]], Any]]
"""``(questions, verdicts, rules) -> (breakdowns, headline)``: a benchmark's tables; ``headline`` is ``(metric,
value)`` or ``None`` for overall accuracy."""


def score_with_rules(
    benchmark: str,
    items: Sequence[QAItem],
    predictions: Mapping[str, str],
    rules: str | RuleSet | None,
    seed: int | None,
    unrunnable: Sequence[UnrunnableRow],
    tables: Tables,
) -> dict[str, Any]:
    """Score ``items`` (and ``unrunnable`` rows, when the rule set keeps them) with a rule set of ``benchmark``
    (a name, a :class:`RuleSet`, or ``None`` for the benchmark's default) and build the report
    (:func:`msjoe.rules.score.build_report`, plus ``unrunnable_rows``: their ids and whether they were scored)."""
    rule_set = rules if isinstance(rules, RuleSet) else get_rules(benchmark, rules)
    if rule_set.benchmark != benchmark:
        raise ValueError(f"rule set {rule_set.name!r} scores {rule_set.benchmark}, not {benchmark}")
    extra = [row for row in unrunnable if row.options or rule_set.unparsed != "random"]
    questions: list[Question] = [*items, *(extra if rule_set.keeps_unrunnable_rows else [])]
    scored, unknown = score_replies(questions, predictions, rule_set, seed=seed)
    unrunnable_ids = {row.id for row in unrunnable}
    unknown = [key for key in unknown if key not in unrunnable_ids]  # known rows the rule set leaves out
    breakdowns, headline = tables(questions, scored, rule_set)
    report = build_report(benchmark, questions, scored, unknown, rule_set, breakdowns, seed=seed, headline=headline)
    report["unrunnable_rows"] = {"scored": rule_set.keeps_unrunnable_rows, "ids": sorted(unrunnable_ids)}
    return report
