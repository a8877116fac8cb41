"""MLVU's VideoChat2 example scoring (``evaluation/models/videochat2/choice_bench.py``, ``check_ans``, lines
445-460): the reply (VideoChat2's ``answer`` returns it stripped) up to its first ``)`` must equal the letter, so
``"B) ..."`` is right and ``"(B) ..."`` is not. Rows and averaging as in :mod:`msjoe.rules.mlvu`.
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "JUNJIE99/MLVU",
    "evaluation/models/videochat2/choice_bench.py",
    "4bcc3c01d56db14a26a1efd8bb5caa2c496454d6",
    "check_ans, answer",
)


def read(reply: str, question: Question) -> str | None:
    text = reply.strip()
    if ")" in text:
        text = text[: text.index(")")]
    return text or None


RULES = RuleSet(
    benchmark="mlvu",
    name="mlvu_videochat2",
    summary="MLVU's VideoChat2 example: the stripped reply up to its first ')' must equal the letter",
    sources=(SOURCE,),
    read=read,
    unparsed="wrong",
    missing="as_empty",
    keeps_unrunnable_rows=True,
)
