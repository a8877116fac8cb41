"""The two MLLM turns of MSJoE as chats: query reasoning and answering.

Query turn (:func:`query_prompt`): the model sees the question (and its options), ``K/2`` low-resolution preview
frames sampled uniformly over the video, and writes up to ``max_queries`` short visual descriptions for the CLIP
text tower. The reply format it is asked for (and that :func:`msjoe.mllm.parsing.parse_queries` reads strictly,
with tolerance for common deviations) is one JSON list of strings between tags, nothing else::

    <queries>["a man in a red jacket opening a car door", "a scoreboard showing the final score"]</queries>

A JSON list is used (rather than one query per line) because its string boundaries are unambiguous, so a
description may itself contain commas, numbers or dashes without being mistaken for list syntax.

Answer turn (:func:`answer_prompt`): the ``K`` selected frames at full resolution in time order, then the
question and the lettered options ``A. ...``; the model is asked for the option's letter only (or a short
phrase for free-form questions).

Every frame is preceded by a text label of its timestamp, the same in both turns: ``[t=01:05, 65.0s]``
(``h:mm:ss`` from one hour on), i.e. a clock reading the model can relate to the question plus exact seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np

from msjoe.limits import MAX_QUERIES
from msjoe.mllm.base import ImagePart, Message

# Paper: preview frames cost about 32 visual tokens each. A Qwen2.5-VL visual token covers 28x28 pixels
# (14x14 patches merged 2x2), so the pixel cap is 32 * 28 * 28.
PREVIEW_MAX_PIXELS = 32 * 28 * 28
QUERY_TAG = "queries"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Leading option labels as benchmarks write them: "(A) x", "[A] x", "A) x", "A. x", "A: x", "A - x".
# "A." and "A:" need whitespace after them so "A.5 m" or "A:B ratio" keep their text; the bare form "A x"
# is never a label, since "A man walks" is an ordinary option.
_OPTION_PREFIX = re.compile(
    r"^\s*(?:\(([A-Za-z])\)\s*|\[([A-Za-z])\]\s*|([A-Za-z])\)\s*|([A-Z])[.:](?:\s+|$)|([A-Z])\s+[-–—]\s+)"
)


def option_letters(n: int) -> list[str]:
    """The first ``n`` option letters, ``["A", "B", ...]``; at most 26."""
    if not 0 <= n <= len(LETTERS):
        raise ValueError(f"number of options must be between 0 and {len(LETTERS)}, got {n}")
    return list(LETTERS[:n])


def strip_option_prefix(option: str, letter: str | None = None) -> str:
    """Remove a leading option label such as ``"A. "``, ``"(A) "`` or ``"A) "`` from ``option``.

    With ``letter`` given, only a label naming that letter (either case) is removed, so an option whose text
    merely starts like a label (``"I. Newton"`` at position A) keeps it. Text without a label is returned
    stripped of surrounding whitespace.
    """
    match = _OPTION_PREFIX.match(option)
    if match is None:
        return option.strip()
    found = next(group for group in match.groups() if group is not None)
    if letter is not None and found.upper() != letter.upper():
        return option.strip()
    return option[match.end() :].strip()


def normalize_options(options: Sequence[str]) -> list[str]:
    """Option texts without their labels, so they can be re-lettered by position (never double-prefixed).

    A label is removed only when it names the option's own position (``"B. x"`` second); raises ``ValueError``
    for more than 26 options, a non-string or an option that is empty once its label is gone.
    """
    letters = option_letters(len(options))
    texts = []
    for index, (letter, option) in enumerate(zip(letters, options, strict=True)):
        if not isinstance(option, str):
            raise ValueError(f"options[{index}] must be a string, got {type(option).__name__}")
        text = strip_option_prefix(option, letter)
        if not text:
            raise ValueError(f"options[{index}] is empty: {option!r}")
        texts.append(text)
    return texts


def format_options(options: Sequence[str]) -> str:
    """``"A. first\\nB. second"``: options re-lettered by position after :func:`normalize_options`."""
    texts = normalize_options(options)
    return "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(len(texts)), texts, strict=True))


def format_clock(seconds: float) -> str:
    """``mm:ss`` below one hour, ``h:mm:ss`` from one hour on; seconds are floored like a clock."""
    total = math.floor(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def timestamp_label(seconds: float) -> str:
    """The label put before every frame: ``"[t=01:05, 65.0s]"``."""
    return f"[t={format_clock(seconds)}, {seconds:.1f}s]"


def format_queries(queries: Sequence[str]) -> str:
    """Render ``queries`` exactly in the reply format the query prompt asks for (also usable as an SFT target)."""
    return f"<{QUERY_TAG}>{json.dumps(list(queries), ensure_ascii=False)}</{QUERY_TAG}>"


QUERY_FORMAT_EXAMPLE = format_queries(
    ["a man in a red jacket opening a car door", "a scoreboard showing the final score"]
)


def query_prompt(
    question: str,
    options: Sequence[str] | None,
    preview_frames: Sequence[np.ndarray],
    preview_timestamps: Sequence[float],
    *,
    max_queries: int = MAX_QUERIES,
    preview_max_pixels: int | None = PREVIEW_MAX_PIXELS,
) -> list[Message]:
    """The query-reasoning turn: question, options and labelled low-resolution previews in, queries out.

    Args:
        question: the user's question.
        options: multiple-choice options (labels optional, see :func:`normalize_options`) or ``None``/empty.
        preview_frames: ``uint8 [H, W, 3]`` frames sampled uniformly over the video (paper: ``K/2``); may be
            empty, in which case the model writes queries from the question alone.
        preview_timestamps: seconds of each preview frame, non-decreasing.
        max_queries: the most queries the model may write (paper: 4).
        preview_max_pixels: pixel cap given to the backend per preview frame; ``None`` keeps its default.
    """
    if max_queries < 1:
        raise ValueError(f"max_queries must be at least 1, got {max_queries}")
    _check_frames(preview_frames, preview_timestamps, "preview_frames", "preview_timestamps")
    content: list[str | ImagePart] = []
    if preview_frames:
        content.append(
            f"Here are {len(preview_frames)} low-resolution frames sampled uniformly from a video, in time order, "
            "each labelled with its timestamp. They are only a coarse overview: the moments that answer the "
            "question may lie between them."
        )
        content += _labelled_images(preview_frames, preview_timestamps, preview_max_pixels)
        content.append("\n")
    content.append(_question_block(question, options))
    content.append(
        f"\n\nDo not answer the question yet. First write up to {max_queries} short search queries that will be "
        "used to find the video frames needed to answer it. Each query is a visual description of what such a "
        "frame shows (concrete objects, people, places, actions or on-screen text, about 5 to 12 words), the "
        "way an image caption would describe it; never a question.\n"
        f"Reply with only a JSON list of 1 to {max_queries} strings between <{QUERY_TAG}> and </{QUERY_TAG}>, "
        f"for example:\n{QUERY_FORMAT_EXAMPLE}"
    )
    return [Message(role="user", content=content)]


def answer_prompt(
    question: str,
    options: Sequence[str] | None,
    frames: Sequence[np.ndarray],
    timestamps: Sequence[float],
    *,
    frame_max_pixels: int | None = None,
) -> list[Message]:
    """The answer turn: the key frames in time order, each labelled, then the question.

    With options the model is asked for the option's letter only (parse it with
    :func:`msjoe.mllm.parsing.parse_answer`); without options (``None`` or empty), for a short phrase.

    Args:
        question: the user's question.
        options: multiple-choice options, labels optional (at most 26), or ``None``/empty for free-form.
        frames: ``uint8 [H, W, 3]`` key frames.
        timestamps: seconds of each frame; must be non-decreasing (frames are shown in time order).
        frame_max_pixels: pixel cap given to the backend per frame; ``None`` keeps its default.
    """
    _check_frames(frames, timestamps, "frames", "timestamps")
    content: list[str | ImagePart] = []
    if frames:
        content.append(f"Here are {len(frames)} frames from a video, in time order, each labelled with its timestamp.")
        content += _labelled_images(frames, timestamps, frame_max_pixels)
        content.append("\n")
    content.append(_question_block(question, options))
    if options:
        content.append("\nAnswer with the option's letter from the given choices directly.")
    else:
        content.append("\nAnswer the question using a single word or a short phrase.")
    return [Message(role="user", content=content)]


def _question_block(question: str, options: Sequence[str] | None) -> str:
    if not question or not question.strip():
        raise ValueError("question is empty")
    block = f"Question: {question.strip()}"
    if options:
        block += f"\nOptions:\n{format_options(options)}"
    return block


def _labelled_images(
    frames: Sequence[np.ndarray], timestamps: Sequence[float], max_pixels: int | None
) -> list[str | ImagePart]:
    parts: list[str | ImagePart] = []
    for frame, seconds in zip(frames, timestamps, strict=True):
        parts.append(f"\n{timestamp_label(seconds)} ")
        parts.append(ImagePart(pixels=frame, max_pixels=max_pixels))
    return parts


def _check_frames(frames: Sequence[np.ndarray], timestamps: Sequence[float], frames_name: str, times_name: str) -> None:
    if len(frames) != len(timestamps):
        raise ValueError(f"{frames_name} has {len(frames)} frames but {times_name} has {len(timestamps)} entries")
    for index, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            shape = getattr(frame, "shape", None)
            dtype = getattr(frame, "dtype", type(frame).__name__)
            raise ValueError(f"{frames_name}[{index}] must be a uint8 [H, W, 3] array, got shape {shape} {dtype}")
    for index, seconds in enumerate(timestamps):
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{times_name}[{index}] must be a finite, non-negative number of seconds, got {seconds}")
        if index and seconds < timestamps[index - 1]:
            raise ValueError(
                f"{times_name} must be in time order: {times_name}[{index}]={seconds} comes after "
                f"{timestamps[index - 1]}"
            )
