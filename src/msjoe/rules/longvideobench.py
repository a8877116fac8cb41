"""LongVideoBench's official scoring: lmms-eval's ``lmms_eval/tasks/longvideobench/utils.py`` (LongVideoBench's
own repository defers to lmms-eval), as rewritten by LongVideoBench's author in lmms-eval commit c0bc79f1
(2024-11-13) and unchanged since (checked at lmms-eval 75571cfe, 2026-08-06, and in lmms-eval 0.7.3).

Extraction (``parse_multi_choice_response``): strip; delete each of 8 answer prefixes in turn (this list has its
commas: "The best option is", "Best option:" ... are all deleted); the first capital ``A``-``E`` anywhere in what
is left, even a letter beyond the question's options (``"E"`` on a 4-option question reads ``E``, wrong) and even
inside a word (``"Answer: D"`` reads ``A``).

Nothing read: ``random.choice`` over the question's letters (the options up to the first ``"N/A"``), from
Python's global ``random``. lmms-eval seeds it once per run (``--seed``, first value, default 0) and then calls
``process_results`` document by document; we draw from ``random.Random(seed)`` in item order, one draw per
unparsed reply, which gives lmms-eval's draws for a run on one process whose scoring consumed the global stream
alone. lmms-eval 0.7.3 scores documents on 4 threads by default (``process_docs_parallel``) and splits them over
processes, so its own draws are not reproducible there; a msjoe report lists every random fallback.

Counting (``longvideobench_aggregate_results``): every question counts; overall = correct / all (its printed
"Overall" num is twice the questions, since every question is in a duration group and a category).
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source
from msjoe.rules.videomme import read_first_capital

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/longvideobench/utils.py",
    "c0bc79f10e2d5b7c525ddcde4cfd962aaf26ae48",
    "parse_multi_choice_response, longvideobench_process_results, longvideobench_aggregate_results",
)

PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)


def read(reply: str, question: Question) -> str | None:
    return read_first_capital(reply, PREFIXES, letters="ABCDE")


RULES = RuleSet(
    benchmark="longvideobench",
    name="longvideobench",
    summary="first capital A-E after deleting answer prefixes; nothing read: a random option (seeded stream, "
    "item order, lmms-eval's default seed 0)",
    sources=(SOURCE,),
    read=read,
    unparsed="random",
    missing="as_empty",
    notes="random draws match lmms-eval only for a one-process run with process_docs_parallel=1 and nothing else "
    "drawing from Python's global random between seeding and scoring",
)
