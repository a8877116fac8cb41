"""lmms-eval's MLVU dev scoring (``lmms_eval/tasks/mlvu/utils.py``, lmms-eval 0.7.3): ``extract_mcq_answer`` with
choices A-D (:mod:`msjoe.rules.mcq_extract`); ``mlvu_aggregate_results_dev`` averages the per-task accuracies over
its fixed list of 7 tasks, so a task without questions counts as 0 in the mean; unparsed replies count as wrong.
"""

from __future__ import annotations

from msjoe.rules import mcq_extract
from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/mlvu/utils.py",
    "9ca4445d0c1c4bcb4964eca6137fecd34ff5084e",
    "extract_characters_regex, mlvu_process_results, mlvu_aggregate_results_dev",
)


def read(reply: str, question: Question) -> str | None:
    return mcq_extract.extract_mcq_answer(reply, "ABCD")


RULES = RuleSet(
    benchmark="mlvu",
    name="mlvu_lmms_eval",
    summary="lmms-eval 0.7.3: extract_mcq_answer over A-D; M-Avg divides by its 7 tasks (an absent task is 0)",
    sources=(SOURCE, mcq_extract.SOURCE),
    read=read,
    unparsed="wrong",
    missing="as_empty",
    mean_over=7,
)
