"""lmms-eval's shared multiple-choice extraction (``extract_mcq_answer``), which its Video-MME, MLVU and LVBench
tasks use since lmms-eval commit 9ca4445d (2026-04-11; lmms-eval 0.7.3, the version msjoe's lmms-eval tests pin).

Reimplemented from ``lmms_eval/tasks/_task_utils/mcq_extract.py`` (EvolvingLMMs-Lab/lmms-eval @ 7a69a9a1).
Every occurrence of a choice letter in a recognised form is a candidate with a priority; the highest priority
wins, then the latest position. Forms and priorities: the reply starts with the letter not followed by a letter
(10); ends with it not preceded by one (9); the first capital choice letter after an answer phrase such as "the
answer is" (7; any later capital counts, even inside a word: "the answer is probably Bob" gives ``B``); ``(X)``
(6); ``X.`` (5); ``X:`` (4); ``X)`` (3); ``X `` (2); only when none of these occurs, any occurrence (0). Before
matching, the reply is stripped, then stripped of ``, . ! ? ; : ' "`` (each in turn, both ends), then padded with
a space on each side. An empty or blank reply gives nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from msjoe.rules.base import Source

SOURCE = Source(
    "EvolvingLMMs-Lab/lmms-eval",
    "lmms_eval/tasks/_task_utils/mcq_extract.py",
    "7a69a9a12f8e6ea872f18762b496b424a8e63a6a",
    "extract_mcq_answer",
)

# Lower-case phrases searched case-insensitively; the letter after them must be a capital. (Data from the
# official list, in its order.)
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)  # fmt: skip

# The suffix after a letter that makes a form, with its priority ("(X)" is matched separately).
_SUFFIX_FORMS = ((".", 5), (":", 4), (")", 3), (" ", 2))


def extract_mcq_answer(reply: str, choices: Sequence[str] = "ABCD") -> str | None:
    """The choice letter lmms-eval reads from ``reply``, or ``None`` (lmms-eval's ``""``)."""
    if not reply.strip():
        return None
    text = reply.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = f" {text} "
    candidates: list[tuple[int, int, str]] = []  # (priority, position, letter), in lmms-eval's order
    candidates += [(6, text.rfind(f"({c})"), c) for c in choices if f"({c})" in text]
    for suffix, priority in _SUFFIX_FORMS:
        candidates += [(priority, text.rfind(c + suffix), c) for c in choices if c + suffix in text]
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        start = lowered.find(phrase)
        if start != -1:
            after = start + len(phrase)
            candidates += [(7, text.find(c, after), c) for c in choices if text.find(c, after) != -1]
    core = text.strip()
    for c in choices:
        if core.startswith(c) and (len(core) == 1 or not core[1].isalpha()):
            candidates.append((10, 0, c))
    for c in choices:
        if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha()):
            candidates.append((9, len(text) - 1, c))
    if not candidates:
        candidates = [(0, text.rfind(c), c) for c in choices if c in text]
    if not candidates:
        return None
    # max() keeps the first of equal keys, as lmms-eval's stable descending sort does.
    return max(candidates, key=lambda candidate: (candidate[0], candidate[1]))[2]
