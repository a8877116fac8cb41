"""lmms-eval's MLVU dev scoring from commit e5f70443 (2025-03-16) until 9ca4445d (2026-04-11), cited at
c7eaef37: ``extract_characters_regex`` strips the reply and returns the character before its first ``)``, else the
whole stripped reply; exact match with the answer letter; M-Avg divides by the fixed 7 dev tasks.
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/mlvu/utils.py",
    "c7eaef373f4b1bd8a6b5f3e85c3391962c30068c",
    "extract_characters_regex, mlvu_aggregate_results_dev",
)


def read(reply: str, question: Question) -> str | None:
    text = reply.strip()
    if ")" in text:
        index = text.index(")")
        text = text[index - 1 : index] if index else ""
    return text or None


RULES = RuleSet(
    benchmark="mlvu",
    name="mlvu_lmms_eval_legacy",
    summary="lmms-eval 2025: the character before the first ')' (else the stripped reply) must equal the letter; "
    "M-Avg divides by 7 tasks",
    sources=(SOURCE,),
    read=read,
    unparsed="wrong",
    missing="as_empty",
    mean_over=7,
)
