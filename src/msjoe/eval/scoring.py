"""Scoring multiple-choice replies the way each benchmark's official script does, and accuracy tables.

Scoring has three steps, each explicit so a report says exactly how its numbers were made:

1. **Extraction** turns a raw reply into an option letter, or ``None`` when the rule finds nothing. Every
   benchmark ships its own rule and they disagree on the same reply (``"Answer: C"`` is ``C`` for VideoMME's
   regex and ``A`` for LVBench's ``polish_answer``), so each is reimplemented here, following its source:

   - ``"videomme"``: ``extract_characters_regex`` of Video-MME's ``evaluation/eval_your_results.py``
     (BradyFU/Video-MME; the same function is in lmms-eval's ``lmms_eval/tasks/videomme/utils.py`` and
     ``lvbench/utils.py``);
   - ``"longvideobench"``: the MMMU-style ``parse_multi_choice_response`` of lmms-eval's
     ``lmms_eval/tasks/longvideobench/utils.py`` (LongVideoBench's own repository, longvideobench/LongVideoBench,
     ships a data loader but no scoring script), without its random fallback, which is policy step 2 here;
   - ``"lvbench"``: ``polish_answer`` of LVBench's ``lvbench/utils/answer_util.py`` (THUDM/LVBench);
   - ``"mlvu"``: ``check_ans`` of MLVU's ``videochat2/choice_bench.py`` (JUNJIE99/MLVU), written for a prompt
     that ends in ``"Best option:("``;
   - ``"mlvu_lmms_eval"``: ``extract_characters_regex`` of lmms-eval's ``lmms_eval/tasks/mlvu/utils.py``;
   - ``"msjoe"``: our :func:`msjoe.mllm.parsing.parse_answer`, which never guesses.

2. **Unparsed replies** (extraction gave nothing) follow a policy: ``"wrong"`` (counted, incorrect),
   ``"exclude"`` (left out of every denominator, as Video-MME's official script does) or ``"random"`` (a seeded
   random option, as lmms-eval's LongVideoBench scoring does unseeded). The random choice of an item depends only
   on ``(seed, item id)``, so it does not change when other items are added, removed or reordered.

3. **Missing predictions** (an item without a reply): ``"error"`` (default: a run that lost items should not
   produce a number silently), ``"wrong"`` or ``"exclude"`` (as LVBench's ``compute_accuracy.py`` does).

Extraction rules are reimplemented from the cited files, not copied; where an official rule has a quirk (a missing
comma that fuses two prefixes in Video-MME's list, sequential stripping in LongVideoBench's), it is reproduced so
scores match the official ones, and the quirk is commented.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from msjoe.data.schema import QAItem
from msjoe.mllm.parsing import parse_answer
from msjoe.mllm.prompts import option_letters

Extractor = Callable[[str, Sequence[str]], str | None]
"""``(reply, options) -> letter or None``; ``options`` are the option texts (some rules match them)."""

UnparsedPolicy = Literal["wrong", "exclude", "random"]
MissingPolicy = Literal["error", "wrong", "exclude"]
ItemStatus = Literal["ok", "unparsed", "random", "missing"]


# --------------------------------------------------------------------------------------------------------------
# Extraction rules
# --------------------------------------------------------------------------------------------------------------
# Video-MME's prefix list has two missing commas, so Python fuses the strings pairwise; the fused strings never
# occur in replies, so "The best option is" and "Best answer:" are in effect not removed. Kept as published.
_VIDEOMME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)


def extract_videomme(reply: str, options: Sequence[str] = ()) -> str | None:
    """Video-MME's rule: drop known prefixes, then the first capital ``A``-``D`` anywhere in the reply.

    Only ``A``-``D`` are looked for (Video-MME questions have 4 options), so ``"Based on..."`` reads as ``B``:
    that is the official behaviour. (The original also returns nothing for replies of more than 10 words without
    such a capital; that test is implied by the search, so it is not repeated.)
    """
    text = reply.strip()
    for prefix in _VIDEOMME_PREFIXES:
        text = text.replace(prefix, "")
    match = re.search(r"[ABCD]", text)
    return match.group(0) if match else None


def extract_longvideobench(reply: str, options: Sequence[str]) -> str | None:
    """lmms-eval's LongVideoBench rule (MMMU's ``parse_multi_choice_response``) without the random fallback.

    In order: letters in parentheses ``(B)``; else letters followed by a space; else letters followed by a dot;
    else, for replies longer than 5 words, option texts contained in the reply (case-insensitive). Several
    candidates: the one whose mark occurs last in the reply wins. Nothing: ``None``.
    """
    letters = option_letters(len(options))
    text = reply
    for char in ",.!?;:'":  # one character at a time, in this order, as the original does
        text = text.strip(char)
    text = f" {text} "  # so a letter at either end is followed/preceded by a space

    candidates = [letter for letter in letters if f"({letter})" in text]
    mark = "bracket" if candidates else "letter"
    if not candidates:
        candidates = [letter for letter in letters if f"{letter} " in text]
    if not candidates:
        candidates = [letter for letter in letters if f"{letter}." in text]
    if not candidates and len(text.split()) > 5:
        lowered = text.lower()
        candidates = [letter for letter, option in zip(letters, options, strict=True) if option.lower() in lowered]
        mark = "text"
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]

    def last_position(letter: str) -> int:
        if mark == "bracket":
            return text.rfind(f"({letter})")
        if mark == "text":
            return text.lower().rfind(options[letters.index(letter)].lower())
        return text.rfind(f" {letter} ")  # -1 for letters found only as "B." : the first such candidate wins

    positions = [last_position(letter) for letter in candidates]
    return candidates[positions.index(max(positions))]  # first of equal maxima, like numpy.argmax


def extract_lvbench(reply: str, options: Sequence[str] = ()) -> str | None:
    """LVBench's ``polish_answer``: the text before the first ``)``, after a ``(`` if any, first word, first
    character. ``"(B) a dog"`` and ``"B. a dog"`` give ``B``; ``"Answer: C"`` gives ``A`` (official behaviour)."""
    text = reply.strip().split(")")[0].strip()
    if "(" in text:
        text = text.split("(")[1].strip()
    word = text.split(" ")[0]
    return word[0] if word else None


def extract_mlvu(reply: str, options: Sequence[str] = ()) -> str | None:
    """MLVU's ``check_ans``: the stripped reply up to its first ``)`` must be exactly the letter.

    Written for MLVU's prompt, which ends in ``"Best option:("`` so a model continues with ``"B) ..."``. A reply
    like ``"(B) ..."`` or ``"B."`` to another prompt gives ``None``; use ``"mlvu_lmms_eval"`` or ``"msjoe"``
    for such prompts.
    """
    text = reply.strip()
    if ")" in text:
        text = text[: text.index(")")]
    return text if len(text) == 1 and text.isalpha() else None


def extract_mlvu_lmms_eval(reply: str, options: Sequence[str] = ()) -> str | None:
    """lmms-eval's MLVU rule: the character just before the first ``)``, else the whole stripped reply."""
    text = reply.strip()
    if ")" in text:
        index = text.index(")")
        text = text[index - 1 : index]
    return text if len(text) == 1 and text.isalpha() else None


def extract_msjoe(reply: str, options: Sequence[str]) -> str | None:
    """Our parser (:func:`msjoe.mllm.parsing.parse_answer`): the letter when the reply is unambiguous."""
    return parse_answer(reply, options).letter


EXTRACTORS: dict[str, Extractor] = {
    "videomme": extract_videomme,
    "longvideobench": extract_longvideobench,
    "lvbench": extract_lvbench,
    "mlvu": extract_mlvu,
    "mlvu_lmms_eval": extract_mlvu_lmms_eval,
    "msjoe": extract_msjoe,
}


def resolve_extractor(extractor: str | Extractor) -> tuple[str, Extractor]:
    """``(name, function)`` for a registered rule name or a callable (named after its ``__name__``)."""
    if callable(extractor):
        return getattr(extractor, "__name__", "custom"), extractor
    try:
        return extractor, EXTRACTORS[extractor]
    except KeyError:
        raise ValueError(f"unknown extractor {extractor!r}; choose one of: {', '.join(EXTRACTORS)}") from None


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredItem:
    """The outcome for one item.

    Attributes:
        id: the item's id.
        answer: the correct letter.
        reply: the raw reply, ``None`` when the prediction is missing.
        extracted: what the extraction rule returned (may be a letter outside the options, or ``None``).
        chosen: the letter scored: ``extracted``, or the random fallback; ``None`` if neither.
        correct: ``chosen == answer``.
        counted: whether the item is in the denominators (``False`` for excluded unparsed/missing items).
        status: ``"ok"``, ``"unparsed"``, ``"random"`` (unparsed, random fallback) or ``"missing"``.
    """

    id: str
    answer: str
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


@dataclass(frozen=True)
class ScoringPolicy:
    """How replies become scores (see the module docstring); recorded in every report.

    Attributes:
        extractor: a name in :data:`EXTRACTORS` or a callable ``(reply, options) -> letter | None``.
        unparsed: ``"wrong"``, ``"exclude"`` or ``"random"``.
        missing_predictions: ``"error"``, ``"wrong"`` or ``"exclude"``.
        seed: seeds the ``"random"`` fallback.
    """

    extractor: str | Extractor
    unparsed: UnparsedPolicy
    missing_predictions: MissingPolicy = "error"
    seed: int = 0

    def __post_init__(self) -> None:
        resolve_extractor(self.extractor)
        if self.unparsed not in ("wrong", "exclude", "random"):
            raise ValueError(f"unparsed must be 'wrong', 'exclude' or 'random', got {self.unparsed!r}")
        if self.missing_predictions not in ("error", "wrong", "exclude"):
            raise ValueError(
                f"missing_predictions must be 'error', 'wrong' or 'exclude', got {self.missing_predictions!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "extractor": resolve_extractor(self.extractor)[0],
            "unparsed": self.unparsed,
            "missing_predictions": self.missing_predictions,
            "seed": self.seed if self.unparsed == "random" else None,
        }


def random_fallback(item_id: str, letters: Sequence[str], seed: int) -> str:
    """The seeded random option of an unparsed reply; depends only on ``(seed, item_id)`` (string seeds are
    hashed with SHA-512 by :class:`random.Random`, so this is stable across processes and Python runs)."""
    return random.Random(f"{seed}:{item_id}").choice(list(letters))


def score_items(
    items: Sequence[QAItem], predictions: Mapping[str, str], policy: ScoringPolicy
) -> tuple[list[ScoredItem], list[str]]:
    """Score every item; return the scored items (in item order) and the prediction ids matching no item.

    Raises ``ValueError`` for an item without ground truth, a non-string reply, or (policy ``"error"``) items
    without a prediction.
    """
    _, extract = resolve_extractor(policy.extractor)
    no_answer = [item.id for item in items if item.answer is None]
    if no_answer:
        raise ValueError(
            f"{len(no_answer)} items have no ground-truth answer (a test split?), e.g. {no_answer[:3]}; "
            "they cannot be scored locally"
        )
    missing = [item.id for item in items if item.id not in predictions]
    if missing and policy.missing_predictions == "error":
        raise ValueError(
            f"{len(missing)} of {len(items)} items have no prediction, e.g. {missing[:5]}; pass "
            "missing_predictions='wrong' or 'exclude' to score anyway"
        )
    known = {item.id for item in items}
    unknown = [key for key in predictions if key not in known]

    scored = []
    for item in items:
        assert item.answer is not None
        if item.id not in predictions:
            counted = policy.missing_predictions == "wrong"
            scored.append(ScoredItem(item.id, item.answer, None, None, None, False, counted, "missing"))
            continue
        reply = predictions[item.id]
        if not isinstance(reply, str):
            raise ValueError(f"the prediction for item {item.id!r} must be a string, got {type(reply).__name__}")
        extracted = extract(reply, item.options) or None  # "" from a custom rule also means nothing found
        if extracted is not None:
            scored.append(
                ScoredItem(item.id, item.answer, reply, extracted, extracted, extracted == item.answer, True, "ok")
            )
        elif policy.unparsed == "random":
            chosen = random_fallback(item.id, item.letters, policy.seed)
            scored.append(ScoredItem(item.id, item.answer, reply, None, chosen, chosen == item.answer, True, "random"))
        else:
            counted = policy.unparsed == "wrong"
            scored.append(ScoredItem(item.id, item.answer, reply, None, None, False, counted, "unparsed"))
    return scored, unknown


def tally(scored: Iterable[ScoredItem]) -> Tally:
    """Correct/total over the counted items."""
    counted = [s for s in scored if s.counted]
    return Tally(sum(s.correct for s in counted), len(counted))


def breakdown(
    items: Sequence[QAItem],
    scored: Sequence[ScoredItem],
    groups_of: Callable[[QAItem], Iterable[str]],
    order: Sequence[str] = (),
) -> dict[str, Tally]:
    """Accuracy per group; an item counts once in each group ``groups_of(item)`` names (several for LVBench's
    multi-type questions). Groups in ``order`` come first (the official listing order), others sorted after."""
    tallies: dict[str, Tally] = {}
    for item, result in zip(items, scored, strict=True):
        if not result.counted:
            continue
        for group in dict.fromkeys(groups_of(item)):  # a group named twice on one item still counts once
            tallies[group] = tallies.get(group, Tally()) + Tally(int(result.correct), 1)
    first = [group for group in order if group in tallies]
    rest = sorted(set(tallies) - set(first))
    return {group: tallies[group] for group in (*first, *rest)}


def category_values(name: str) -> Callable[[QAItem], list[str]]:
    """``groups_of`` for :func:`breakdown`: the item's ``categories[name]`` (a value or list of values)."""

    def groups_of(item: QAItem) -> list[str]:
        value = item.categories.get(name)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)

    return groups_of


def mean_accuracy(tallies: Mapping[str, Tally]) -> float | None:
    """The unweighted mean of the non-empty groups' accuracies (MLVU's M-Avg); ``None`` if all are empty."""
    values = [t.accuracy for t in tallies.values() if t.accuracy is not None]
    return sum(values) / len(values) if values else None


def build_report(
    benchmark: str,
    items: Sequence[QAItem],
    scored: Sequence[ScoredItem],
    unknown_prediction_ids: Sequence[str],
    policy: ScoringPolicy,
    breakdowns: Mapping[str, Mapping[str, Tally]],
    *,
    headline: tuple[str, float | None] | None = None,
) -> dict[str, Any]:
    """The report dict shared by all benchmarks (JSON-serialisable; accuracies in [0, 1]).

    Keys: ``benchmark``; ``headline`` ``{"metric", "value"}`` (overall accuracy unless given); ``overall``
    ``{"correct", "total", "accuracy"}``; ``breakdowns`` ``{name: {group: {...}}}``; ``counts`` (items,
    counted, unparsed, random_fallback, missing_predictions, unknown_prediction_ids); ``policy``; ``ids``
    (the ids behind the unparsed / random / missing counts, so every adjustment is visible); ``items``
    (one record per item, for error analysis).
    """
    overall = tally(scored)
    by_status = {status: [s.id for s in scored if s.status == status] for status in ("unparsed", "random", "missing")}
    metric, value = headline if headline is not None else ("accuracy", overall.accuracy)
    return {
        "benchmark": benchmark,
        "headline": {"metric": metric, "value": value},
        "overall": overall.to_dict(),
        "breakdowns": {name: {g: t.to_dict() for g, t in table.items()} for name, table in breakdowns.items()},
        "counts": {
            "items": len(items),
            "counted": overall.total,
            "unparsed": len(by_status["unparsed"]),
            "random_fallback": len(by_status["random"]),
            "missing_predictions": len(by_status["missing"]),
            "unknown_prediction_ids": len(unknown_prediction_ids),
        },
        "policy": policy.to_dict(),
        "ids": {
            "unparsed": by_status["unparsed"],
            "random_fallback": by_status["random"],
            "missing_predictions": by_status["missing"],
            "unknown_predictions": list(unknown_prediction_ids[:100]),
        },
        "items": [s.to_dict() for s in scored],
    }


# --------------------------------------------------------------------------------------------------------------
# Prediction files
# --------------------------------------------------------------------------------------------------------------
def read_predictions(path: str | Path) -> dict[str, str]:
    """Replies by item id from a prediction file, in any of these layouts:

    - JSONL, one ``{"id": ..., "reply": ...}`` per line (what our harness writes; its error lines, with
      ``"status": "error"`` and no reply, are skipped: choose how they count with ``missing_predictions``);
    - a JSON object ``{id: reply}`` (LVBench's answer file for ``compute_accuracy.py``; lmms-eval's
      LongVideoBench submission file);
    - Video-MME's official results file (``evaluation/output_test_template.json`` in BradyFU/Video-MME): a list of
      videos, each with ``questions`` holding ``question_id`` and ``response``.

    Ids are returned as strings (LVBench's ``uid`` keys may be integers in hand-written files). Raises
    ``ValueError`` naming the file and the line or entry that is malformed, and for duplicate ids.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return _read_jsonl_predictions(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if isinstance(data, dict):
        predictions = {}
        for key, reply in data.items():
            if not isinstance(reply, str):
                raise ValueError(f"{path}: the reply for id {key!r} must be a string, got {type(reply).__name__}")
            predictions[str(key)] = reply
        return predictions
    if isinstance(data, list):
        return _read_videomme_results(path, data)
    raise ValueError(
        f"{path}: expected a JSON object {{id: reply}} or Video-MME's results list, got {type(data).__name__}"
    )


def _read_jsonl_predictions(path: Path, text: str) -> dict[str, str]:
    predictions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: invalid JSON: {err.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected an object with 'id' and 'reply'")
        if record.get("status") == "error" and record.get("reply") is None:
            continue  # the pipeline failed on this item: there is no reply to score
        for name in ("id", "reply"):
            if name not in record:
                raise ValueError(f"{path}:{number}: field {name!r} is required")
        key, reply = record["id"], record["reply"]
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise ValueError(f"{path}:{number}: field 'id' must be a string, got {type(key).__name__}")
        if not isinstance(reply, str):
            raise ValueError(f"{path}:{number}: field 'reply' must be a string, got {type(reply).__name__}")
        if str(key) in predictions:
            raise ValueError(f"{path}:{number}: duplicate id {key!r}")
        predictions[str(key)] = reply
    return predictions


def _read_videomme_results(path: Path, videos: list[Any]) -> dict[str, str]:
    predictions: dict[str, str] = {}
    for v, video in enumerate(videos):
        if not isinstance(video, dict) or not isinstance(video.get("questions"), list):
            raise ValueError(f"{path}: entry {v} must be a video object with a 'questions' list (Video-MME layout)")
        for q, question in enumerate(video["questions"]):
            where = f"{path}: entry {v}, questions[{q}]"
            if not isinstance(question, dict) or "question_id" not in question or "response" not in question:
                raise ValueError(f"{where}: 'question_id' and 'response' are required")
            if not isinstance(question["response"], str):
                raise ValueError(f"{where}: 'response' must be a string")
            key = str(question["question_id"])
            if key in predictions:
                raise ValueError(f"{where}: duplicate question_id {key!r}")
            predictions[key] = question["response"]
    return predictions
