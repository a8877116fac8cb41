"""lmms-eval's LVBench scoring (``lmms_eval/tasks/lvbench/utils.py``, lmms-eval 0.7.3): ``extract_mcq_answer``
with choices A-D (:mod:`msjoe.rules.mcq_extract`) compared with the answer letter; the metric is the plain mean
over all questions (no per-type table in lmms-eval; msjoe still reports one), unparsed replies count as wrong.
"""

from __future__ import annotations

from msjoe.rules import mcq_extract
from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/lvbench/utils.py",
    "9ca4445d0c1c4bcb4964eca6137fecd34ff5084e",
    "extract_characters_regex, lvbench_process_results",
)


def read(reply: str, question: Question) -> str | None:
    return mcq_extract.extract_mcq_answer(reply, "ABCD")


RULES = RuleSet(
    benchmark="lvbench",
    name="lvbench_lmms_eval",
    summary="lmms-eval 0.7.3: extract_mcq_answer over A-D; unparsed replies count as wrong; mean over questions",
    sources=(SOURCE, mcq_extract.SOURCE),
    read=read,
    unparsed="wrong",
    missing="as_empty",
)
