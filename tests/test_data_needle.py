"""`msjoe data needle`: the span holds exactly the target clip's frames, checked by decoding the written video
(barcoded synthetic videos: every frame names its source frame), and the build is seeded and resumable."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.needle import NeedleConfig, build_needles
from msjoe.data.schema import QAItem, read_qa_jsonl, write_qa_jsonl
from msjoe.synthetic_video import Event, read_frame_index, render_frame, write_video
from msjoe.video import decode_frames, probe

FPS = 4.0
SIZE = (128, 72)
RED, BLUE, GREEN = (220, 30, 30), (30, 60, 220), (30, 180, 40)
runner = CliRunner()


def video(path: Path, seconds: float, colour: tuple[int, int, int], size: tuple[int, int] = SIZE) -> Path:
    return write_video(path, duration=seconds, fps=FPS, size=size, events=[Event(0.0, seconds, colour)], gop=8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[QAItem]:
    folder = tmp_path_factory.mktemp("needle-sources")
    target = video(folder / "target.mp4", 6.0, RED)
    long_target = video(folder / "long.mp4", 20.0, GREEN)
    for n in range(3):
        video(folder / f"hay{n}.mp4", 20.0, BLUE)
    base = {"options": ("red", "blue", "green"), "source": "src", "duration": 6.0}
    return [
        QAItem(id="t", video=str(target), question="Which colour fills the screen?", answer="A", **base),
        QAItem(id="long", video=str(long_target), question="Which colour?", answer="C", **base),  # no span: unusable
    ]


def haystack(sources: list[QAItem]) -> list[Path]:
    return sorted(Path(sources[0].video).parent.glob("hay*.mp4"))


def colour_of(frame: np.ndarray) -> str:
    body = frame[frame.shape[0] // 2 :, :4].reshape(-1, 3).mean(axis=0)  # left edge below the barcode band
    return ["red", "blue", "green"][int(np.argmin([np.abs(body - c).sum() for c in (RED, BLUE, GREEN)]))]


def test_the_span_holds_exactly_the_target_frames(sources: list[QAItem], tmp_path: Path) -> None:
    config = NeedleConfig(count=3, duration=30.0, haystack_clip=8.0, max_needle=10.0, fps=FPS, size=SIZE, seed=7)
    report = build_needles(sources, tmp_path / "out", config, haystack=haystack(sources))
    assert report.unusable == [("long", "its video lasts 20.0 s (more than max_needle 10 s) and it has no evidence "
                                        "span to cut a clip from")]  # fmt: skip
    assert report.encoded == 3 and [item.id for item in read_qa_jsonl(report.path)] == ["needle-00000",
                                                                                        "needle-00001",
                                                                                        "needle-00002"]  # fmt: skip
    starts = set()
    for item in report.items:
        (start, end), frame = item.evidence[0], 1 / FPS
        assert end - start == 6.0 and item.question == "Which colour fills the screen?" and item.answer == "A"
        info = probe(item.video)
        assert info.duration == pytest.approx(30.0) and info.num_frames == 120
        inside = decode_frames(item.video, [start, start + 2.5, end - frame / 2])
        assert [read_frame_index(f) for f in inside] == [0, 10, 23]  # source frames 0, 10 and the last (23)
        assert [colour_of(f) for f in inside] == ["red"] * 3
        # Exact content at the edges: the target's own first and last frames, as rendered.
        for decoded, index in ((inside[0], 0), (inside[2], 23)):
            rendered = render_frame(index, index / FPS, *SIZE, [Event(0.0, 6.0, RED)])
            assert np.abs(decoded.astype(int) - rendered).mean() < 6
        outside = [t for t in (start - frame / 2, end) if 0 <= t < 30.0]
        assert outside and all(colour_of(f) == "blue" for f in decode_frames(item.video, outside))
        # Every haystack frame is where the plan put it: its source frame number at the recorded offset.
        for piece in item.meta["needle"]["haystack"]:
            t = piece["at"] / FPS
            assert read_frame_index(decode_frames(item.video, [t])[0]) == round(piece["start"] * FPS)
        assert str(Path(sources[0].video)) in item.meta["needle"]["sources"]
        starts.add(start)
    assert len(starts) > 1  # random positions

    # Seeded: the same plans into another folder; rerun into the same folder encodes nothing.
    again = build_needles(sources, tmp_path / "again", config, haystack=haystack(sources))
    plans = sorted((tmp_path / "out" / "videos").glob("*.plan.json"))
    assert [p.read_text() for p in plans] == [(tmp_path / "again" / "videos" / p.name).read_text() for p in plans]
    assert [(i.evidence, i.meta) for i in again.items] == [(i.evidence, i.meta) for i in report.items]
    assert build_needles(sources, tmp_path / "out", config, haystack=haystack(sources)).encoded == 0
    other_seed = build_needles(sources, tmp_path / "other", NeedleConfig(**{**config.__dict__, "seed": 8}),
                               haystack=haystack(sources))  # fmt: skip
    assert [i.evidence for i in other_seed.items] != [i.evidence for i in report.items]


def test_when_questions_name_the_quarter_holding_the_needle(sources: list[QAItem], tmp_path: Path) -> None:
    target = QAItem(**{**sources[0].to_dict(), "meta": {"caption": "a red screen"}, "evidence": []})
    config = NeedleConfig(count=8, duration=40.0, haystack_clip=8.0, max_needle=8.0, fps=FPS, size=SIZE,
                          question="when", describe="meta.caption")  # fmt: skip
    report = build_needles([target], tmp_path / "when", config, haystack=haystack(sources))
    for item in report.items:
        start, end = item.evidence[0]
        quarter = "ABCD".index(item.answer)
        assert 10 * quarter <= start and end <= 10 * (quarter + 1)
        assert item.question == "When does the video show a red screen?"
        assert item.options == ("00:00-00:10", "00:10-00:20", "00:20-00:30", "00:30-00:40")


def test_letterboxed_haystack_and_the_command(sources: list[QAItem], tmp_path: Path) -> None:
    square = video(tmp_path / "square.mp4", 10.0, BLUE, size=(64, 64))
    qa_file = write_qa_jsonl(tmp_path / "qa.jsonl", sources[:1])
    args = ["data", "needle", str(qa_file), "--out", str(tmp_path / "cmd"), "--count", "1", "--duration", "12",
            "--max-needle", "8", "--haystack-clip", "4", "--fps", "4", "--size", "128x72",
            "--haystack", str(square)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    item = read_qa_jsonl(tmp_path / "cmd" / "needle_qa.jsonl")[0]
    start, end = item.evidence[0]
    t = 0.0 if start > 0 else end
    frame = decode_frames(item.video, [t])[0]
    assert frame[:, :28].max() < 40 and frame[:, -28:].max() < 40  # black bars beside the 72x72 picture
    assert colour_of(frame[:, 28:-28]) == "blue"
    bad = runner.invoke(app, [*args[:-2], "--size", "128"])
    assert bad.exit_code == 1 and "--size must be WIDTHxHEIGHT" in bad.output
    plan = json.loads((tmp_path / "cmd" / "videos" / "needle-00000.plan.json").read_text())
    assert plan["needle_frames"][1] - plan["needle_frames"][0] == 24


@pytest.mark.parametrize(
    ("changes", "message"),
    [  # each message names the field, what it must be and the value given
        ({"count": 0}, "count must be an int >= 1, got 0"),
        ({"count": 2.0}, "count must be an int >= 1, got 2.0"),
        ({"duration": 0.0}, "duration must be a finite number > 0, got 0.0"),
        ({"haystack_clip": -1}, "haystack_clip must be a finite number > 0, got -1"),
        ({"fps": math.inf}, "fps must be a finite number > 0, got inf"),
        ({"gop_seconds": "2"}, "gop_seconds must be a finite number > 0, got '2'"),
        ({"margin": -0.5}, "margin must be a finite number >= 0, got -0.5"),
        ({"crf": 52}, "crf must be an int in [0, 51] (libx264's quality scale), got 52"),
        ({"question": "where"}, "question must be one of ('source', 'when'), got 'where'"),
        ({"describe": 3}, "describe must be None or a str, got 3"),
        ({"seed": True}, "seed must be an int, got True"),
        ({"size": (128.0, 72)}, "size must be a tuple of int, got (128.0, 72)"),
        # checks no single annotation states, kept by hand
        ({"size": (127, 72)}, "size must be (width, height), both even and >= 16, got (127, 72)"),
        ({"size": (128, 72, 3)}, "size must be (width, height), both even and >= 16, got (128, 72, 3)"),
        ({"question": "when"}, "the 'when' question needs describe"),
        ({"max_needle": 30.0}, "max_needle (30 s) must be shorter than the video (30 s)"),
    ],
)
def test_config_refuses_a_bad_value_naming_the_field(changes: dict[str, object], message: str) -> None:
    valid = {"count": 3, "duration": 30.0, "haystack_clip": 8.0, "max_needle": 10.0, "fps": FPS, "size": SIZE}
    NeedleConfig(**valid)  # the base is valid: each case fails for its own change
    with pytest.raises(ValueError, match=re.escape(message)):
        NeedleConfig(**{**valid, **changes})
