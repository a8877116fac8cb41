"""Video-MME's first official scoring: ``evaluation/eval_your_results.py`` of BradyFU/Video-MME, deleted from
that repository on 2024-06-18 (commit 49a2e67a) when the README started linking thanku-all/parse_answer.

The same as :mod:`msjoe.rules.videomme` except the prefix list (lines 65-78 of the cited version): it lacks
``"Answer:"``, ``"Option:"``, ``"The correct answer"`` and ``"The correct option"``, so ``"Answer: D"`` reads
``A`` (the ``A`` of "Answer"). lmms-eval's Video-MME task used this extraction until it moved to its shared
``extract_mcq_answer`` (see :mod:`msjoe.rules.videomme_lmms_eval`), but counted unparsed replies as wrong.
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source
from msjoe.rules.videomme import read_first_capital

SOURCE = Source(
    "BradyFU/Video-MME",
    "evaluation/eval_your_results.py",
    "4e7566d36f63121fc72f040654d6f38f83f30125",
    "extract_characters_regex, eval_your_results",
)

PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",  # two prefixes fused by a missing comma
    "Best answer:Best option:",  # two prefixes fused by a missing comma
)


def read(reply: str, question: Question) -> str | None:
    return read_first_capital(reply, PREFIXES)


RULES = RuleSet(
    benchmark="videomme",
    name="videomme_legacy",
    summary="first capital A-D after deleting the original, shorter prefix list; unparsed replies left out",
    sources=(SOURCE,),
    read=read,
    unparsed="exclude",
    missing="as_empty",
)
