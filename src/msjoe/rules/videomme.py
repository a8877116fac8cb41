"""Video-MME's current official scoring: ``eval_your_results.py`` of thanku-all/parse_answer, the script the
Video-MME README (MME-Benchmarks/Video-MME @ 06c2315b, "Evaluation") links to.

Extraction (``extract_characters_regex``, lines 65-89): strip; delete each prefix of a fixed list in turn
(``str.replace``, anywhere in the reply, case-sensitive); the first capital ``A``-``D`` anywhere in what is left.
The list has two missing commas, so Python fuses ``"The best option is" "The correct option is"`` and
``"Best answer:" "Best option:"`` into strings that never occur: those four prefixes are in effect never removed.
So ``"Answer: D"`` reads ``D``, but ``"Best option: D"`` reads ``B`` (the ``B`` of "Best"), and ``"Based on the
video, C"`` reads ``B``. Lower-case letters are never read. (Its ">10 words and no capital A-D" test returns the
same as the search, so it needs no code.)

Counting (``eval_your_results``, lines 152-181 and 257-259): a reply with nothing extracted is left out of both
"correct" and "answered", in every table; overall = correct / answered over all questions. A question without a
reply cannot be scored by that script (it reads ``response`` for every question, and asserts 300 videos per
duration unless ``skip_missing``, which skips whole videos): we score it as the empty reply, which it also leaves
out.
"""

from __future__ import annotations

import re

from msjoe.rules.base import Question, RuleSet, Source

SOURCE = Source(
    "thanku-all/parse_answer",
    "eval_your_results.py",
    "afd52cfe3dde5b3685e0d4f760c10c756860c758",
    "extract_characters_regex, eval_your_results",
)
README = Source(
    "MME-Benchmarks/Video-MME", "README.md", "06c2315b892f88578f81d73205d07cf576f292b9", "Evaluation: links the script"
)

# The official list with its two missing commas applied: Python fused those literals; so do we.
PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",  # two prefixes fused by a missing comma
    "Best answer:Best option:",  # two prefixes fused by a missing comma
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)


def read_first_capital(reply: str, prefixes: tuple[str, ...], letters: str = "ABCD") -> str | None:
    """The first of ``letters`` in ``reply`` after stripping it and deleting each of ``prefixes`` in turn."""
    text = reply.strip()
    for prefix in prefixes:
        text = text.replace(prefix, "")
    match = re.search(f"[{letters}]", text)
    return match.group(0) if match else None


def read(reply: str, question: Question) -> str | None:
    return read_first_capital(reply, PREFIXES)


RULES = RuleSet(
    benchmark="videomme",
    name="videomme",
    summary="first capital A-D after deleting answer prefixes; replies without one are left out of every count",
    sources=(SOURCE, README),
    read=read,
    unparsed="exclude",
    missing="as_empty",
    notes="groups listed in the script's order; a group without answered items shows no accuracy (the script "
    "prints 0.0)",
)
