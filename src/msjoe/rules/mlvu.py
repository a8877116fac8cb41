"""MLVU's official multiple-choice scoring: ``evaluation/multiple_choice_evaluation/choice_bench.py`` of
JUNJIE99/MLVU (the script MLVU's ``evaluation/README.md`` points to), written for a prompt ending in
``"Best Option: ("`` so that a model continues with ``"B) ..."``.

Ground truth (``qa_template``, lines 79-90): the letter of the *last* candidate equal to the answer text; when
the answer is not among the candidates the index stays -1 and the letter is ``chr(ord("A") - 1) == "@"``: the row
is still scored and nothing but the reply ``"@"`` matches it. Rows with empty candidates are scored too.

Extraction (``check_ans``, lines 105-119): with a ``)`` in the reply, the one character before the first ``)``
(``""`` when the reply starts with it); without one, the whole reply, unstripped. Right when that equals the
letter exactly: ``"(B) Carried by..."`` and ``"The answer is (A)."`` read ``B`` and ``A``; ``"B"`` is right but
``"B "``, ``"B."`` and ``"b)"`` are not.

Counting (``main``, lines 145-205): every question counts in its task; the headline "Avg" is the mean of the
per-task accuracies over the tasks that have questions (a macro average). A question without a reply is scored
as the empty reply (wrong).
"""

from __future__ import annotations

from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "JUNJIE99/MLVU",
    "evaluation/multiple_choice_evaluation/choice_bench.py",
    "4bcc3c01d56db14a26a1efd8bb5caa2c496454d6",
    "MLVU.qa_template, check_ans, main",
)
README = Source("JUNJIE99/MLVU", "evaluation/README.md", "fd060c10a43ea48a35100a22688a927b8e531199", "Multiple-Choice")


def read(reply: str, question: Question) -> str | None:
    if ")" in reply:
        index = reply.index(")")
        reply = reply[index - 1 : index] if index else ""  # [-1:0] is "" in Python
    return reply or None


RULES = RuleSet(
    benchmark="mlvu",
    name="mlvu",
    summary="the character before the first ')' (else the whole reply) must equal the letter; M-Avg = mean of "
    "per-task accuracies",
    sources=(SOURCE, README),
    read=read,
    unparsed="wrong",
    missing="as_empty",
    keeps_unrunnable_rows=True,
)
