"""A tiny synthetic QA dataset for smoke tests of training and evaluation: NOT a benchmark, NOT real data.

:func:`write_smoke_dataset` writes a few seconds-long synthetic videos (:mod:`msjoe.synthetic_video`: a barcode of
the frame index, a drifting grey background and coloured *events*, full-frame flashes of one named colour at known
times) and a QA JSONL with two questions per video::

    folder/
      SMOKE_TEST_DATA.txt          what this is
      smoke_qa.jsonl               QA items, source "smoke"
      videos/smoke-000.mp4 ...

Every video shows two flashes of different colours; one question asks for the colour of the first flash, the
other for the second, with 4 colour options (both flash colours among them, so one distractor is on screen too).
Evidence spans are the asked flash's time span. The ``difficulty`` written is a stand-in for the base model's pass
rate with uniform frames (there is no base model here): the fraction of the video the asked flash covers, clipped
to [0.05, 0.95]. Rate the items with a real model with :func:`msjoe.train.answerer.fill_difficulty`.

Everything is drawn from ``seed``: the same arguments give the same QA file and the same videos.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from msjoe.checks import is_int
from msjoe.data.schema import QAItem, write_qa_jsonl
from msjoe.mllm.prompts import option_letters
from msjoe.synthetic_video import Event, write_video

__all__ = ["COLOURS", "SMOKE_SOURCE", "write_smoke_dataset"]

SMOKE_SOURCE = "smoke"
QA_FILE = "smoke_qa.jsonl"
README_FILE = "SMOKE_TEST_DATA.txt"
VIDEO_FPS = 4.0  # frames per second of the files (the candidate grid is usually 1 fps)
QUESTIONS = ("What colour flashes on screen first?", "What colour flashes on screen second?")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "magenta": (210, 40, 200),
    "cyan": (40, 210, 220),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
"""Named, well separated colours of the flashes (RGB)."""

_README = """SMOKE-TEST DATA - synthetic, for checking that training and evaluation run end to end.
It is not a benchmark and says nothing about model quality.

Written by msjoe.data.smoke.write_smoke_dataset(num_items={num_items}, seed={seed}, duration={duration:g},
size={size}). Each video shows two full-frame flashes of named colours; each question asks for the colour of the
first or the second flash. The "difficulty" field is a stand-in (the fraction of the video the asked flash
covers), not a model's pass rate.
"""


def write_smoke_dataset(
    folder: str | Path,
    *,
    num_items: int = 8,
    seed: int = 0,
    duration: float = 16.0,
    size: tuple[int, int] = (96, 64),
) -> Path:
    """Write smoke-test videos and their QA JSONL into ``folder``; return the JSONL's path.

    Args:
        folder: created if needed; files of an earlier call are overwritten.
        num_items: questions to write (two per video; an odd count leaves one video with one question).
        seed: draws colours, flash times and option orders.
        duration: length of each video in seconds (at least 8: two flashes of 1.5-3 s with room around them).
        size: ``(width, height)`` of the videos, both even (H.264 4:2:0) and at least 32.

    Takes well under a second per video at the default size.
    """
    if not is_int(num_items) or num_items < 1:
        raise ValueError(f"num_items must be a positive int, got {num_items!r}")
    if not (math.isfinite(duration) and duration >= 8.0):
        raise ValueError(f"duration must be at least 8 seconds (two flashes and gaps), got {duration!r}")
    width, height = size
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(f"size must be (width, height), both even and >= 32, got {size!r}")

    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLOURS)
    items: list[QAItem] = []
    for video_number in range(math.ceil(num_items / 2)):
        first, second = rng.sample(names, 2)
        events = _two_flashes(rng, duration, COLOURS[first], COLOURS[second])
        video = write_video(
            folder / "videos" / f"smoke-{video_number:03d}.mp4",
            duration=duration,
            fps=VIDEO_FPS,
            size=(width, height),
            events=events,
            gop=int(VIDEO_FPS * 2),
        )
        for order, (colour, event) in enumerate(zip((first, second), events, strict=True)):
            if len(items) == num_items:
                break
            other = second if order == 0 else first
            distractors = rng.sample([n for n in names if n not in (first, second)], 2)
            options = [colour, other, *distractors]
            rng.shuffle(options)
            coverage = (event.end - event.start) / duration
            items.append(
                QAItem(
                    id=f"smoke-{len(items):04d}",
                    video=str(video),
                    question=QUESTIONS[order],
                    options=tuple(options),
                    answer=option_letters(len(options))[options.index(colour)],
                    duration=duration,
                    source=SMOKE_SOURCE,
                    task="colour",
                    categories={"flash": ("first", "second")[order]},
                    difficulty=round(min(0.95, max(0.05, coverage)), 4),
                    evidence=((event.start, event.end),),
                    meta={"synthetic": True, "note": "smoke-test data, not a benchmark", "seed": seed},
                )
            )
    (folder / README_FILE).write_text(
        _README.format(num_items=num_items, seed=seed, duration=duration, size=size), encoding="utf-8"
    )
    return write_qa_jsonl(folder / QA_FILE, items, relative_to=folder)


def _two_flashes(
    rng: random.Random, duration: float, first: tuple[int, int, int], second: tuple[int, int, int]
) -> list[Event]:
    """Two non-overlapping flashes of 1.5-3 s, the first in the first half of the video, the second after it."""
    spans = []
    for colour, (low, high) in zip((first, second), ((0.5, duration / 2), (duration / 2 + 0.5, duration)), strict=True):
        length = round(rng.uniform(1.5, 3.0), 1)
        start = round(rng.uniform(low, max(low, high - length - 0.5)), 1)
        spans.append(Event(start, round(start + length, 1), colour))
    return spans
