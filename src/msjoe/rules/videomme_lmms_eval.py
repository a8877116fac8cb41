"""lmms-eval's Video-MME scoring (``lmms_eval/tasks/videomme/utils.py``, lmms-eval 0.7.3): lmms-eval's shared
``extract_mcq_answer`` with choices A-D (:mod:`msjoe.rules.mcq_extract`); ``videomme_aggregate_results`` counts
every question, so a reply with nothing extracted (``""``) is counted wrong; overall = correct / all questions.
"""

from __future__ import annotations

from msjoe.rules import mcq_extract
from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/videomme/utils.py",
    "9ca4445d0c1c4bcb4964eca6137fecd34ff5084e",
    "extract_characters_regex, videomme_process_results, videomme_aggregate_results",
)


def read(reply: str, question: Question) -> str | None:
    return mcq_extract.extract_mcq_answer(reply, "ABCD")


RULES = RuleSet(
    benchmark="videomme",
    name="videomme_lmms_eval",
    summary="lmms-eval 0.7.3: extract_mcq_answer over A-D; unparsed replies count as wrong",
    sources=(SOURCE, mcq_extract.SOURCE),
    read=read,
    unparsed="wrong",
    missing="as_empty",
)
