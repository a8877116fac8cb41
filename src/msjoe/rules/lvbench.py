"""LVBench's official scoring (THUDM/LVBench, now zai-org/LVBench): the answer post-processing
``polish_answer`` (``lvbench/utils/answer_util.py``) applied to the reply, then ``compute_accuracy``
(``lvbench/metrics/compute_accuracy.py``) on the resulting uid -> answer file.

``polish_answer`` (lines 1-18): strip; keep the text before the first ``)``; strip; if a ``(`` is left, keep what
follows it and strip; keep the first space-separated word; its first character (``""`` if none). So ``"(B) a
dog"`` and ``"B. a dog"`` read ``B``, ``"Answer: C"`` reads ``A``, and ``"b"`` reads ``b`` (wrong: no case
folding).

``compute_accuracy`` (lines 17-33): for every question of the annotation file whose ``str(uid)`` is a key of the
answer file, the answer counts in each of its ``question_type`` entries (a type listed twice counts twice) and
once overall; it is right when it equals the stored ``answer`` exactly (a stored ``"A "`` is never matched).
Questions without an answer are skipped. Every row with a uid, an answer and a question type is scored, even one
whose options msjoe cannot split out of the question text.
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source

ANSWER_UTIL = Source(
    "THUDM/LVBench", "lvbench/utils/answer_util.py", "1dd4612d63907c2836627c665a7bbccc050df3b8", "polish_answer"
)
COMPUTE_ACCURACY = Source(
    "THUDM/LVBench",
    "lvbench/metrics/compute_accuracy.py",
    "f998d95541cd5f0953c52449b185c6467b9b099d",
    "compute_accuracy",
)


def polish_answer(reply: str) -> str:
    """LVBench's ``polish_answer``, reimplemented."""
    text = reply.strip().split(")")[0].strip()
    if "(" in text:
        text = text.split("(")[1].strip()
    word = text.split(" ")[0]
    return word[:1]


def read(reply: str, question: Question) -> str | None:
    return polish_answer(reply) or None  # "" equals no stored answer (the loader requires a non-empty one)


RULES = RuleSet(
    benchmark="lvbench",
    name="lvbench",
    summary="polish_answer (first character of the first word, after an opening bracket), compared exactly "
    "with the stored answer; questions without a reply skipped; multi-type questions count in each listed type",
    sources=(ANSWER_UTIL, COMPUTE_ACCURACY),
    read=read,
    unparsed="wrong",
    missing="exclude",
    repeated_groups="each",
    answer_as_stored=True,
    keeps_unrunnable_rows=True,
)
