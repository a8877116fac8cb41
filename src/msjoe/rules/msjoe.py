"""msjoe's own reading, the same for every benchmark: :func:`msjoe.mllm.parsing.parse_answer`, which reads a
letter only when the reply is unambiguous (prefixes, brackets, lower case, option text; two different letters
without a final statement read nothing). Unparsed and missing replies count as wrong, every group counts an item
once, and only rows msjoe can ask are scored. Not any benchmark's official number: use it to compare models
whose reply styles differ.
"""

from __future__ import annotations

from msjoe.mllm.parsing import parse_answer
from msjoe.rules.base import Question, RuleSet


def read(reply: str, question: Question) -> str | None:
    return parse_answer(reply, list(question.options)).letter


def rules_for(benchmark: str) -> RuleSet:
    """The ``msjoe`` rule set of ``benchmark``."""
    return RuleSet(
        benchmark=benchmark,
        name="msjoe",
        summary="msjoe's parser (never guesses); unparsed and missing replies count as wrong",
        sources=(),
        read=read,
        unparsed="wrong",
        missing="wrong",
    )
