"""LongVideoBench as lmms-eval scored it before commit c0bc79f1 (2024-11-13): MMMU's
``parse_multi_choice_response`` (lmms-eval ``lmms_eval/tasks/longvideobench/utils.py`` @ 7548ebe1).

In order: letters in parentheses ``(B)``; else letters followed by a space; else letters followed by a dot;
else, for replies of more than 5 words, option texts contained in the reply (case-insensitive). Before that the
reply is stripped of ``, . ! ? ; : '`` (one character kind at a time, in that order) and padded with spaces.
Several candidates: the one whose mark occurs last wins (``numpy.argmax``: the first of equal positions; a letter
found only as ``"B."`` has position -1). Nothing: a random option, drawn as in :mod:`msjoe.rules.longvideobench`.
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source, option_letters

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/longvideobench/utils.py",
    "7548ebe112b01da4973f854b1c3d3c1c44abd5a9",
    "parse_multi_choice_response",
)


def read(reply: str, question: Question) -> str | None:
    options = question.options
    letters = option_letters(len(options))
    text = reply
    for char in ",.!?;:'":  # one character kind at a time, in this order, as the original does
        text = text.strip(char)
    text = f" {text} "

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
    if len(candidates) <= 1:
        return candidates[0] if candidates else None

    def last_position(letter: str) -> int:
        if mark == "bracket":
            return text.rfind(f"({letter})")
        if mark == "text":
            return text.lower().rfind(options[letters.index(letter)].lower())
        return text.rfind(f" {letter} ")  # -1 for letters found only as "B.": the first such candidate wins

    positions = [last_position(letter) for letter in candidates]
    return candidates[positions.index(max(positions))]  # first of equal maxima, like numpy.argmax


RULES = RuleSet(
    benchmark="longvideobench",
    name="longvideobench_mmmu",
    summary="lmms-eval before 2024-11: MMMU's parser (brackets, then letters, then option text); nothing read: a "
    "random option",
    sources=(SOURCE,),
    read=read,
    unparsed="random",
    missing="as_empty",
)
