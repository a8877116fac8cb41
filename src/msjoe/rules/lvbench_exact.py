"""LVBench's ``compute_accuracy.py`` alone, without ``polish_answer``: the reply (as stored in a uid -> answer
file) must equal the stored answer exactly. For scoring answer files that were post-processed elsewhere; see
:mod:`msjoe.rules.lvbench` for the counting."""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet
from msjoe.rules.lvbench import COMPUTE_ACCURACY


def read(reply: str, question: Question) -> str | None:
    return reply


RULES = RuleSet(
    benchmark="lvbench",
    name="lvbench_exact",
    summary="compute_accuracy alone: the stored reply must equal the stored answer exactly",
    sources=(COMPUTE_ACCURACY,),
    read=read,
    unparsed="wrong",
    missing="exclude",
    repeated_groups="each",
    answer_as_stored=True,
    keeps_unrunnable_rows=True,
)
