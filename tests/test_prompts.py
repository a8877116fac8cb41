"""Prompts of the query and answer turns: option letters and labels, timestamp labels, images, the query format."""

import json

import numpy as np
import pytest

from msjoe.mllm.base import ImagePart, Message
from msjoe.mllm.parsing import parse_queries, queries_follow_format
from msjoe.mllm.prompts import (
    MAX_QUERIES,
    PREVIEW_MAX_PIXELS,
    QUERY_FORMAT_EXAMPLE,
    answer_prompt,
    format_clock,
    format_options,
    format_queries,
    normalize_options,
    option_letters,
    query_prompt,
    strip_option_prefix,
    timestamp_label,
)


def frames(n: int, height: int = 6, width: int = 8) -> list[np.ndarray]:
    return [np.full((height, width, 3), 10 * i, dtype=np.uint8) for i in range(n)]


def text_of(messages: list[Message]) -> str:
    return "".join(part for message in messages for part in message.content if isinstance(part, str))


def images_of(messages: list[Message]) -> list[ImagePart]:
    return [part for message in messages for part in message.content if isinstance(part, ImagePart)]


# --- letters and option labels -------------------------------------------------------------------------------
def test_option_letters():
    assert option_letters(0) == []
    assert option_letters(4) == ["A", "B", "C", "D"]
    assert option_letters(26)[-1] == "Z"
    with pytest.raises(ValueError, match="between 0 and 26"):
        option_letters(27)
    with pytest.raises(ValueError):
        option_letters(-1)


@pytest.mark.parametrize(
    ("option", "letter", "expected"),
    [
        ("A. a red car", None, "a red car"),
        ("(A) a red car", None, "a red car"),
        ("(a) a red car", None, "a red car"),
        ("A) a red car", None, "a red car"),
        ("a) a red car", None, "a red car"),
        ("[A] a red car", None, "a red car"),
        ("A: a red car", None, "a red car"),
        ("A - a red car", None, "a red car"),
        ("(A)a red car", None, "a red car"),
        ("  B.   two people  ", None, "two people"),
        ("A man is walking", None, "A man is walking"),  # an article, not a label
        ("A.5 metres", None, "A.5 metres"),  # no space after the dot: not a label
        ("a red car", None, "a red car"),
        ("B. a red car", "A", "B. a red car"),  # a label naming another position is text
        ("I. Newton", "A", "I. Newton"),
        ("b) a red car", "B", "a red car"),
        ("C. (A) nested", None, "(A) nested"),  # one label only
    ],
)
def test_strip_option_prefix(option, letter, expected):
    assert strip_option_prefix(option, letter) == expected


@pytest.mark.parametrize(
    "options",
    [
        ["a dog", "a red car", "a cat"],
        ["A. a dog", "B. a red car", "C. a cat"],
        ["(A) a dog", "(B) a red car", "(C) a cat"],
        ["A) a dog", "B) a red car", "C) a cat"],
        ["A. a dog", "a red car", "(C) a cat"],  # mixed
    ],
)
def test_format_options_reletters_without_double_prefix(options):
    assert format_options(options) == "A. a dog\nB. a red car\nC. a cat"


def test_normalize_options_rejects_bad_options():
    with pytest.raises(ValueError, match=r"options\[1\] is empty"):
        normalize_options(["a dog", "B. "])
    with pytest.raises(ValueError, match=r"options\[0\] must be a string"):
        normalize_options([3, "a dog"])
    with pytest.raises(ValueError, match="between 0 and 26"):
        normalize_options([f"option {i}" for i in range(27)])


# --- timestamps ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "clock", "label"),
    [
        (0.0, "00:00", "[t=00:00, 0.0s]"),
        (12.0, "00:12", "[t=00:12, 12.0s]"),
        (65.9, "01:05", "[t=01:05, 65.9s]"),
        (599.0, "09:59", "[t=09:59, 599.0s]"),
        (3599.5, "59:59", "[t=59:59, 3599.5s]"),
        (3600.0, "1:00:00", "[t=1:00:00, 3600.0s]"),
        (3665.0, "1:01:05", "[t=1:01:05, 3665.0s]"),
        (36000.0, "10:00:00", "[t=10:00:00, 36000.0s]"),
    ],
)
def test_timestamp_formats(seconds, clock, label):
    assert format_clock(seconds) == clock
    assert timestamp_label(seconds) == label


# --- answer prompt -------------------------------------------------------------------------------------------
def test_answer_prompt_layout():
    shown = frames(3)
    times = [5.0, 65.0, 3700.0]
    messages = answer_prompt("What is red?", ["A. a dog", "(B) a red car"], shown, times, frame_max_pixels=1234)
    assert [message.role for message in messages] == ["user"]
    content = messages[0].content
    images = images_of(messages)
    assert [image.pixels is frame for image, frame in zip(images, shown, strict=True)] == [True] * 3
    assert all(image.max_pixels == 1234 for image in images)
    # each image is directly preceded by its own label, in time order
    for image, seconds in zip(images, times, strict=True):
        position = next(i for i, part in enumerate(content) if part is image)
        assert content[position - 1].strip() == timestamp_label(seconds)
    text = text_of(messages)
    assert text.index("[t=00:05, 5.0s]") < text.index("[t=01:05, 65.0s]") < text.index("[t=1:01:40, 3700.0s]")
    assert "Question: What is red?" in text
    assert "A. a dog\nB. a red car" in text
    assert "B. (B)" not in text and "A. A." not in text
    assert "letter" in text
    assert text.index("[t=1:01:40") < text.index("Question:")  # frames come before the question


def test_answer_prompt_defaults_and_free_form():
    messages = answer_prompt("How many people?", None, frames(2), [1.0, 2.0])
    assert all(image.max_pixels is None for image in images_of(messages))
    text = text_of(messages)
    assert "Options" not in text and "letter" not in text
    assert "short phrase" in text
    assert text_of(answer_prompt("How many people?", [], frames(2), [1.0, 2.0])) == text


def test_answer_prompt_accepts_equal_timestamps_and_no_frames():
    assert len(images_of(answer_prompt("Q?", ["x", "y"], frames(2), [3.0, 3.0]))) == 2
    messages = answer_prompt("Q?", ["x", "y"], [], [])
    assert images_of(messages) == [] and "Question: Q?" in text_of(messages)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(options=[f"o{i}" for i in range(27)]), "between 0 and 26"),
        (dict(timestamps=[1.0]), "2 frames but timestamps has 1"),
        (dict(timestamps=[2.0, 1.0]), r"time order: timestamps\[1\]=1.0"),
        (dict(timestamps=[-1.0, 1.0]), r"timestamps\[0\] must be a finite, non-negative"),
        (dict(timestamps=[0.0, float("nan")]), r"timestamps\[1\] must be a finite"),
        (dict(question="  "), "question is empty"),
        (dict(frames=[np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)]), r"frames\[1\] must be a uint8"),
        (dict(frames=[np.zeros((4, 4, 3), np.float32)] * 2), r"frames\[0\] must be a uint8"),
        (dict(options=["a", ""]), r"options\[1\] is empty"),
    ],
)
def test_answer_prompt_rejects_bad_input(kwargs, message):
    arguments = dict(question="Q?", options=["x", "y"], frames=frames(2), timestamps=[1.0, 2.0]) | kwargs
    with pytest.raises(ValueError, match=message):
        answer_prompt(**arguments)


# --- query prompt --------------------------------------------------------------------------------------------
def test_query_prompt_layout():
    previews = frames(4)
    times = [0.0, 900.0, 1800.0, 2700.0]
    messages = query_prompt("Who scores first?", ["(A) the red team", "(B) the blue team"], previews, times)
    images = images_of(messages)
    assert len(images) == 4 and all(image.max_pixels == PREVIEW_MAX_PIXELS for image in images)
    assert PREVIEW_MAX_PIXELS == 32 * 28 * 28
    text = text_of(messages)
    labels = [timestamp_label(seconds) for seconds in times]
    assert [text.index(label) for label in labels] == sorted(text.index(label) for label in labels)
    assert "Question: Who scores first?" in text
    assert "A. the red team\nB. the blue team" in text
    assert f"up to {MAX_QUERIES}" in text
    assert "<queries>" in text and "</queries>" in text
    assert QUERY_FORMAT_EXAMPLE in text


def test_query_prompt_options():
    messages = query_prompt("Q?", None, frames(1), [1.0], max_queries=2, preview_max_pixels=None)
    text = text_of(messages)
    assert "up to 2 " in text and "1 to 2 strings" in text and "Options" not in text
    assert images_of(messages)[0].max_pixels is None
    assert images_of(query_prompt("Q?", None, [], [])) == []
    with pytest.raises(ValueError, match="max_queries must be at least 1"):
        query_prompt("Q?", None, [], [], max_queries=0)
    with pytest.raises(ValueError, match="preview_frames has 1 frames but preview_timestamps has 0"):
        query_prompt("Q?", None, frames(1), [])
    with pytest.raises(ValueError, match="preview_timestamps must be in time order"):
        query_prompt("Q?", None, frames(2), [5.0, 4.0])


@pytest.mark.parametrize(
    "queries",
    [
        ["a red car"],
        ["a man in a red jacket opening a car door", "a scoreboard showing the final score"],
        ['a sign reading "EXIT"', "a chef, a knife, and an onion", "Ünïcode café sign", "a timer at 01:05"],
        ["A. a label-like start", "[bracketed] text", "a man, 30 years old", "it's raining"],
    ],
)
def test_query_format_round_trip(queries):
    """A reply written exactly in the format the prompt asks for parses back to the same queries."""
    reply = format_queries(queries)
    assert reply.startswith("<queries>[") and reply.endswith("]</queries>")
    assert json.loads(reply[len("<queries>") : -len("</queries>")]) == queries
    assert parse_queries(reply) == queries
    assert queries_follow_format(reply)


def test_prompt_example_is_a_valid_reply():
    assert queries_follow_format(QUERY_FORMAT_EXAMPLE)
    assert len(parse_queries(QUERY_FORMAT_EXAMPLE)) == 2
