"""Reading the MLLM's replies: search queries from the query turn, an option letter from the answer turn.

Queries. The strict format (what :func:`msjoe.mllm.prompts.query_prompt` asks for) is one JSON list of strings
between tags and nothing else: ``<queries>["a red car", "a dog on a beach"]</queries>``.
:func:`parse_queries` also reads, in this order of preference: the tags holding one query per line; a JSON
list (or an object with a ``"queries"`` key) anywhere, fenced or not, single quotes and trailing commas
tolerated; numbered or bulleted lines (``1. x``, ``- x``, ``Query 1: x``), ignoring the chatter around them;
plain lines. Queries are cleaned (markers, quotes, trailing punctuation), lines longer than
:data:`MAX_QUERY_WORDS` words are taken for prose and dropped, duplicates (case-insensitive) removed.

Answers. :func:`parse_answer` never guesses; evidence is read in this order and the first rule that finds
something decides:

1. the whole reply is a letter: ``B``, ``b``, ``(B)``, ``B.``, ``Option B``;
2. explicit statements (``Answer: B``, ``the correct option is (B)``, ``I choose B``, ``B is correct``,
   ``Therefore, B.``): the last one wins, so a final answer overrides letters weighed earlier in reasoning;
3. a leading labelled letter: ``B) the red car``, ``B. ...``, ``(B) ...``, ``B: ...`` (but ``(A) or (C)``, a
   second letter offered as an alternative, is ambiguous);
4. letters mentioned anywhere (``(B)``, ``option B``, a bare ``B`` followed by punctuation or a word like
   "is"/"because"), ignoring ruled-out ones (``not A``, ``A is wrong``): one distinct letter is the answer,
   several are ambiguous;
5. the reply repeats exactly one option's text.

An English article is not a letter: "A man is walking" gives nothing by itself. ``<think>`` blocks are
skipped; ``<answer>`` tags, a JSON ``{"answer": ...}`` object and markdown emphasis are unwrapped first.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from msjoe.limits import MAX_QUERIES
from msjoe.mllm.prompts import QUERY_TAG, normalize_options, option_letters

MAX_QUERY_WORDS = 30  # longer "queries" are prose; CLIP's 77-token context holds about 50 words anyway
_MAX_JSON_STARTS = 64

_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)


def _without_think(reply: str) -> str:
    return _THINK.sub(" ", reply)


# --------------------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------------------
_TAGGED = re.compile(rf"<{QUERY_TAG}>(.*?)(?:</{QUERY_TAG}>|$)", re.IGNORECASE | re.DOTALL)
_STRICT_QUERIES = re.compile(rf"\s*<{QUERY_TAG}>\s*(\[.*\])\s*</{QUERY_TAG}>\s*", re.DOTALL)
_LIST_MARKER = re.compile(
    r"^\s*(?:(?:search\s+)?(?:query|description|q)\s*#?\d+\s*[:.)\-–]\s*|\(?\d+[.)\]:]\s+|\d+\s+[-–]\s+|[-*•·–+]\s+)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:search\s+)?(?:queries|query|descriptions?)\s*:\s*", re.IGNORECASE)
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’"}


def parse_queries(reply: str, max_queries: int = MAX_QUERIES) -> list[str]:
    """Up to ``max_queries`` cleaned, distinct queries from a query-turn reply, in order; ``[]`` if none.

    Falling back to the question when nothing parses is the caller's decision, not made here.
    """
    if max_queries < 1:
        raise ValueError(f"max_queries must be at least 1, got {max_queries}")
    text = _without_think(reply)
    tagged = _TAGGED.findall(text)
    attempts = []
    if tagged:  # the last tag pair is the final one; earlier ones may be the format echoed in reasoning
        inner = tagged[-1]
        attempts += [
            lambda: _json_queries(inner),
            lambda: _quoted_queries(inner),
            lambda: _line_queries(inner, structured_only=False),
        ]
    attempts += [
        lambda: _json_queries(text),
        lambda: _quoted_queries(text),
        lambda: _line_queries(text, structured_only=True),
        lambda: _line_queries(text, structured_only=False),
    ]
    for attempt in attempts:
        queries = _clean_queries(attempt(), max_queries)
        if queries:
            return queries
    return []


def queries_follow_format(reply: str, max_queries: int = MAX_QUERIES) -> bool:
    """Whether ``reply`` is exactly the strict query format with 1..``max_queries`` distinct, short queries.

    This is the format check of the RL format reward; :func:`parse_queries` is the lenient reader.
    """
    match = _STRICT_QUERIES.fullmatch(reply)
    if match is None:
        return False
    try:
        value = json.loads(match.group(1))
    except json.JSONDecodeError:
        return False
    if not isinstance(value, list) or not 1 <= len(value) <= max_queries:
        return False
    if not all(isinstance(item, str) and item.strip() for item in value):
        return False
    return _clean_queries(value, max_queries) == [item.strip() for item in value]


def _clean_queries(candidates: Sequence[str], max_queries: int) -> list[str]:
    queries: list[str] = []
    seen: set[str] = set()
    for candidate in candidates:
        query = _clean_query(candidate)
        key = query.casefold()
        if not query or key in seen or len(query.split()) > MAX_QUERY_WORDS:
            continue
        seen.add(key)
        queries.append(query)
        if len(queries) == max_queries:
            break
    return queries


def _clean_query(text: str) -> str:
    text = text.replace("**", "").strip()
    text = _LABEL.sub("", _LIST_MARKER.sub("", text))
    text = _strip_quotes(text.strip().rstrip(",;").strip())
    text = text.rstrip(".").strip()
    if not any(char.isalnum() for char in text):
        return ""
    return " ".join(text.split())


def _strip_quotes(text: str) -> str:
    """Remove quotes around ``text``, and a stray one left at either end by a broken list, keep inner ones."""
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    for opening, closing in _QUOTE_PAIRS.items():
        if text.startswith(opening) and closing not in text[1:]:
            text = text[1:].strip()
        if text.endswith(closing) and opening not in text[:-1]:
            text = text[:-1].strip()
    return text


def _json_queries(text: str) -> list[str]:
    """Strings of the first JSON (or Python-literal) list, or ``{"queries": ...}`` object, found in ``text``."""
    for value in _json_values(text):
        queries = _strings_of(value)
        if queries:
            return queries
    return []


def _json_values(text: str) -> Iterator[object]:
    text = text.translate(str.maketrans({"“": '"', "”": '"'}))
    text = re.sub(r",\s*([\]}])", r"\1", text)  # trailing commas
    decoder = json.JSONDecoder()
    # a bounded number of start positions keeps a pathological reply ("[[[[...") from costing O(n^2)
    for match in itertools.islice(re.finditer(r"[\[{]", text), _MAX_JSON_STARTS):
        try:
            yield decoder.raw_decode(text, match.start())[0]
        except (json.JSONDecodeError, RecursionError):
            continue
    for match in itertools.islice(re.finditer(r"\[[^\[\]]*\]", text), _MAX_JSON_STARTS):  # Python-style ['a']
        try:
            yield ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            continue


def _strings_of(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower() in {"queries", "query", "descriptions", "description", "text"}:
                return _strings_of(item)
        return []
    if isinstance(value, list):
        return [text for item in value if isinstance(item, str | dict) for text in _strings_of(item)]
    return []


def _quoted_queries(text: str) -> list[str]:
    """The quoted strings of a list that is not valid JSON, e.g. cut off: ``["a red car", "a do``."""
    start = text.find("[")
    return [] if start < 0 else re.findall(r"[\"“]([^\"“”\n]+)[\"”]", text[start:])


def _line_queries(text: str, *, structured_only: bool) -> list[str]:
    text = re.sub(rf"</?{QUERY_TAG}>", "\n", text, flags=re.IGNORECASE)
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("```")]
    if structured_only:
        return [line for line in lines if _LIST_MARKER.match(line.replace("**", ""))]
    # plain lines: a line ending in ":" introduces the list ("Here are the queries:"), it is not a query
    return [line for line in lines if not line.rstrip().endswith(":")]


# --------------------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------------------
AnswerStatus = Literal["ok", "ambiguous", "unparsed"]


@dataclass(frozen=True)
class AnswerParse:
    """The outcome of reading an answer reply.

    Attributes:
        letter: the chosen option's letter when ``status == "ok"``, else ``None``.
        status: ``"ok"``; ``"ambiguous"`` (several letters and nothing to decide between them); or
            ``"unparsed"`` (no answer, a refusal, or a letter outside the options).
        reason: which rule decided, in words, for error analysis.
        candidates: the letters in competition when ambiguous.
    """

    letter: str | None
    status: AnswerStatus
    reason: str
    candidates: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_WHOLE_LETTER = re.compile(
    r"(?:(?:option|choice|answer|letter)\s*[:\-]?\s*)?[\"'“‘(\[]?([A-Za-z])[\"'”’)\]]?\s*[.!]?", re.IGNORECASE
)
_EXPLICIT = re.compile(
    r"(?:\b(?:final\s+|correct\s+|right\s+|best\s+)?answer(?:\s+to\s+(?:the|this)\s+question)?"
    r"|\b(?:correct|right|best)\s+(?:option|choice)"
    r"|\bI\s*(?:would|will|'d|’d)?\s*(?:choose|pick|select|go\s+with))\b"
    r"(?:\s*(?:is|would\s+be|should\s+be|must\s+be|will\s+be|=|:|-|–|—))?"
    r"(?:\s+(?:therefore|thus|hence|probably|likely|most\s+likely|clearly|definitely))?"
    r"(?:\s*(?:option|choice|letter)\b)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
# "B is correct", "(B) is the right answer", "option B is the best choice"
_LETTER_IS_CORRECT = re.compile(
    r"(?:\b(?i:option|choice)\s+[(\[]?([A-Za-z])[)\]]?|\(([A-Za-z])\)|\b([A-Z]))"
    r"\s+is\s+(?:the\s+)?(?i:correct|right|best|most\s+likely)\b"
)
# "Therefore, B." / "So (C)!": a conclusion word, then a letter that ends the sentence
_CONCLUSION = re.compile(
    r"\b(?i:therefore|thus|hence|so)\s*,?\s*(?:(?i:option|choice)\s+)?(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z]))"
    r"(?=\s*[.!]|\s*$)"
)
_LETTER_AT = re.compile(r"[\"'“‘]?(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])(?![A-Za-z0-9'’])|([a-z])(?=\s*[.):,]|\s*$))")
_ALTERNATIVE = re.compile(r"\s*(?:or|and|/|&)\s*(?:option\s+)?[(\[]?([A-Z])\b")
_LEADING = re.compile(
    r"[\"'“‘]?(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])(?:\s*[.):,]|[ \t]*\n)|([a-z])\)|([A-Z])\s+[-–—]\s)"
)
# Words that can follow an option letter but never the article "A" (which precedes a noun or adjective).
_LETTER_FOLLOWERS = (
    r"is|was|seems|appears|would|should|must|could|might|matches|fits|best|because|since|as|and|or|vs|versus"
)
_MENTION = re.compile(
    r"\b(?i:option|choice)\s+[\"'“‘(\[]?([A-Za-z])\b"
    r"|\(([A-Za-z])\)|\[([A-Za-z])\]"
    rf"|\b([A-Z])\b(?=[.):,;!?\"'”’]|\s*$|\s*\n|\s+(?:{_LETTER_FOLLOWERS})\b)"
)
# "A is incorrect", "B seems unlikely": a mention that rules the option out
_REJECTED_AFTER = re.compile(
    r"[)\]]?\s+(?:(?:is|seems|appears)\s+(?:(?:also|clearly|definitely)\s+)?(?:incorrect|wrong|not\b|unlikely|irrelevant)"
    r"|does\s+not|doesn't|doesn’t|cannot|can't|can’t|can\s+be\s+(?:ruled\s+out|eliminated))",
    re.IGNORECASE,
)
_NEGATED = re.compile(
    r"(?:\bnot|n't|\bthan|\binstead\s+of|\bexcept|\bunlike|\beliminate|\brule\s+out)\s+(?:option\s+|choice\s+)?"
    r"[\"'“‘(\[]?$",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:cannot|can't|can\s+not|unable\s+to|impossible\s+to|not\s+possible\s+to)\s+(?:be\s+)?"
    r"(?:determine|determined|tell|answer|answered|know|say|identify)"
    r"|\bnone\s+of\s+the\s+(?:options|choices|above)|\b(?:insufficient|not\s+enough)\s+information",
    re.IGNORECASE,
)


def parse_answer(reply: str, options: Sequence[str]) -> AnswerParse:
    """Read the chosen option's letter from a multiple-choice answer reply; never guess.

    Args:
        reply: the model's reply text.
        options: the question's options (labels optional); their number sets the valid letters and their texts
            let a reply that repeats one option's text count as choosing it.
    """
    if not options:
        raise ValueError("options is empty: a free-form answer has no letter to parse")
    texts = normalize_options(options)
    valid = option_letters(len(texts))
    text = _unwrap(reply)
    if not text:
        return AnswerParse(None, "unparsed", "empty reply")

    if match := _WHOLE_LETTER.fullmatch(text):
        return _verdict(match.group(1).upper(), valid, "the reply is a letter")
    explicit = _last_explicit(text, valid, texts)
    if explicit is not None:
        return explicit
    if first := _leading_letter(text, valid):
        others = sorted({_leading_letter(line, valid) for line in text.splitlines()[1:]} - {None, first})
        if others:  # the options echoed as a list
            return AnswerParse(None, "ambiguous", "several lines start with a labelled letter", (first, *others))
        alternative = _ALTERNATIVE.match(text, _LEADING.match(text).end())
        if alternative and alternative.group(1) != first and alternative.group(1) in valid:  # "(A) or (C)"
            return AnswerParse(
                None, "ambiguous", "the reply starts with two letters offered as alternatives",
                (first, alternative.group(1)),
            )  # fmt: skip
        return _verdict(first, valid, "the reply starts with a labelled letter")

    mentioned = _mentioned_letters(text, valid)
    if len(mentioned) == 1:
        return AnswerParse(mentioned[0], "ok", "one option letter is mentioned")
    if mentioned:
        return AnswerParse(None, "ambiguous", "several option letters are mentioned", tuple(mentioned))
    if _REFUSAL.search(text):
        return AnswerParse(None, "unparsed", "the reply declines to answer")
    matched = _options_in_text(_normalize_text(text), texts, valid)
    if len(matched) == 1:
        return AnswerParse(matched[0], "ok", "the reply repeats one option's text")
    if matched:
        return AnswerParse(None, "ambiguous", "the reply repeats several options' texts", tuple(matched))
    return AnswerParse(None, "unparsed", "no option letter or option text found")


def answer_follows_format(reply: str, options: Sequence[str]) -> bool:
    """Whether ``reply`` is just a valid option letter (``"B"``, ``"B."`` or ``"(B)"``), as the prompt asks."""
    match = re.fullmatch(r"\s*\(?([A-Z])\)?\.?\s*", reply)
    return match is not None and match.group(1) in option_letters(len(options))


def _unwrap(reply: str) -> str:
    text = _without_think(reply)
    if tags := _ANSWER_TAG.findall(text):
        text = tags[-1]
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            answer = {str(key).lower(): item for key, item in value.items()}.get("answer")
            if isinstance(answer, str):
                text = answer
                break
    text = re.sub(r"\*\*|__|`+|(?<!\w)\*|\*(?!\w)", "", text)
    # collapse spaces but keep line breaks: "B\nExplanation: ..." puts the answer on a line of its own
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def _verdict(letter: str, valid: list[str], reason: str) -> AnswerParse:
    if letter in valid:
        return AnswerParse(letter, "ok", reason)
    return AnswerParse(None, "unparsed", f"{reason}, but {letter!r} is not one of {valid[0]}-{valid[-1]}")


def _leading_letter(line: str, valid: list[str]) -> str | None:
    match = _LEADING.match(line)
    if match is None or (match.group(3) == "I" and "I" not in valid):  # "I, too, think ..." is the pronoun
        return None
    return _first_group(match).upper()


def _first_group(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None)


def _last_explicit(text: str, valid: list[str], texts: list[str]) -> AnswerParse | None:
    """The verdict of the last explicit answer statement that names a letter or an option text."""
    statements: list[tuple[int, AnswerParse]] = []
    for match in _EXPLICIT.finditer(text):
        verdict = _statement_at(text, match.end(), valid, texts)
        if verdict is not None:
            statements.append((match.start(), verdict))
    for pattern in (_LETTER_IS_CORRECT, _CONCLUSION):
        for match in pattern.finditer(text):
            letter = _first_group(match).upper()
            statements.append((match.start(), _verdict(letter, valid, "an explicit answer statement")))
    if not statements:
        return None
    return max(statements, key=lambda item: item[0])[1]


def _statement_at(text: str, position: int, valid: list[str], texts: list[str]) -> AnswerParse | None:
    """What follows an answer keyword: a letter, two letters ("A or B"), or an option's text."""
    reason = "an explicit answer statement"
    match = _LETTER_AT.match(text, position)
    # only the words right after the keyword matter; a bounded window keeps many keywords from costing O(n^2)
    rest = _normalize_text(text[position : position + 2 * max(map(len, texts)) + 64])
    if match is not None:
        letter = _first_group(match).upper()
        # "the answer is A man walking": an uppercase A or I before a lowercase word may be prose; prefer a
        # matching option text when there is one.
        if match.group(3) in {"A", "I"} and re.match(r"\s+[a-z]", text[match.end() :]):
            by_text = _options_at_start(rest, texts, valid)
            if len(by_text) == 1:
                return AnswerParse(by_text[0], "ok", f"{reason} naming an option's text")
            if letter not in valid:  # "Answer: I think ...": the pronoun
                return None
        alternative = _ALTERNATIVE.match(text, match.end())
        if alternative and alternative.group(1) != letter and alternative.group(1) in valid:
            return AnswerParse(None, "ambiguous", f"{reason} naming two letters", (letter, alternative.group(1)))
        return _verdict(letter, valid, reason)
    by_text = _options_at_start(rest, texts, valid)
    if len(by_text) != 1:
        return None
    # "the answer is a red car or the sky": a second option's text after "or"/"and"
    after = rest[len(_normalize_text(texts[valid.index(by_text[0])])) :].split(" ", 2)
    if len(after) == 3 and after[1] in {"or", "and"}:
        second = _options_at_start(after[2], texts, valid)
        if second and second[0] != by_text[0]:
            return AnswerParse(None, "ambiguous", f"{reason} naming two options' texts", (by_text[0], second[0]))
    return AnswerParse(by_text[0], "ok", f"{reason} naming an option's text")


def _mentioned_letters(text: str, valid: list[str]) -> list[str]:
    """Distinct valid letters mentioned as option letters, in order of first mention, negated ones excluded."""
    letters: list[str] = []
    for match in _MENTION.finditer(text):
        if match.group(4) == "I":  # the pronoun; "I" counts only in brackets or after "option"
            continue
        letter = _first_group(match).upper()
        negated = _NEGATED.search(text[max(0, match.start() - 30) : match.start()])
        rejected = _REJECTED_AFTER.match(text, match.end())
        if letter in valid and not negated and not rejected and letter not in letters:
            letters.append(letter)
    return letters


def _normalize_text(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _options_at_start(normalized: str, texts: list[str], valid: list[str]) -> list[str]:
    starts = [i for i, option in enumerate(texts) if _starts_with_words(normalized, _normalize_text(option))]
    return _longest_only(starts, texts, valid)


def _options_in_text(normalized: str, texts: list[str], valid: list[str]) -> list[str]:
    found = [
        i for i, option in enumerate(texts) if (words := _normalize_text(option)) and f" {words} " in f" {normalized} "
    ]
    return _longest_only(found, texts, valid)


def _starts_with_words(normalized: str, words: str) -> bool:
    return bool(words) and (normalized == words or normalized.startswith(words + " "))


def _longest_only(indices: list[int], texts: list[str], valid: list[str]) -> list[str]:
    """Drop matches whose text lies inside another match's text ("red car" inside "a red car")."""
    norms = {i: _normalize_text(texts[i]) for i in indices}
    kept = [
        i
        for i in indices
        if not any(j != i and norms[i] != norms[j] and f" {norms[i]} " in f" {norms[j]} " for j in indices)
    ]
    return [valid[i] for i in kept]
