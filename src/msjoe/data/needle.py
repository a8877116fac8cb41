"""``msjoe data needle``: needle-in-a-haystack items in the style of TSPO: a short target clip (the *needle*) is
spliced at a random position into a long *haystack* cut from other videos, and the new item asks about the
needle, with its evidence span known exactly.

For item ``n`` (drawn from ``random.Random(f"{seed}:{n}")``, so item ``n`` is the same whatever ``count`` is):

* the target is a QA item with an answer (the sources are taken in a seeded order, cycling); its clip is the
  whole video when it lasts at most ``max_needle`` seconds, else its first evidence span widened by
  ``margin`` seconds on each side (an item with neither is not used, and the reason is reported);
* the haystack is cut from the other videos (never the target's), in pieces of at most ``haystack_clip``
  seconds at random offsets, until the item lasts ``duration`` seconds;
* the needle goes in at a random frame of the haystack (with the ``when`` question: inside a randomly drawn
  quarter of the video, so each answer letter is equally likely).

The video is written once at ``fps`` frames per second and ``size``: each output frame is the source frame
displayed at that time (:func:`msjoe.video.iter_frames`), letterboxed to ``size`` (aspect ratio kept, black
bars), then encoded with H.264 at a constant frame rate and a keyframe every ``gop_seconds``, so seeking into it
is exact. Output frame ``i`` shows ``[i / fps, (i + 1) / fps)``; the evidence span ``[p / fps, (p + m) / fps)``
holds exactly the ``m`` needle frames inserted at frame ``p``.

Questions: ``source`` (default) keeps the target's question, options and answer (the clip holds what answers
it); ``when`` asks "When does the video show <description>?" with the four quarters of the video as options,
``<description>`` read from a field of the target (``describe``, e.g. ``meta.caption``).

Each item records how it was made in ``meta["needle"]`` (the target, the clip, every haystack piece and where
it went, ``sources``: every video shown, which :mod:`msjoe.data.split` keeps on one side). A video whose plan is
unchanged (``<video>.plan.json`` beside it) is not encoded again, so an interrupted build resumes.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from msjoe.atomic import atomic_file, write_text_atomically
from msjoe.checks import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bounds, check_fields
from msjoe.data.schema import QAItem, write_qa_jsonl
from msjoe.errors import VideoError
from msjoe.mllm.prompts import format_clock, option_letters
from msjoe.progress import progress_bar
from msjoe.video import VideoInfo, iter_frames, probe

__all__ = ["NeedleConfig", "NeedleReport", "build_needles", "plan_needle"]

logger = logging.getLogger(__name__)

NEEDLE_SOURCE = "needle"
QA_FILE = "needle_qa.jsonl"
QuestionKind = Literal["source", "when"]
QUARTERS = 4


@dataclass(frozen=True)
class NeedleConfig:
    """How needle items are made.

    Attributes:
        count: items to make.
        duration: length of each item's video in seconds (haystack and needle).
        haystack_clip: the longest piece cut from one haystack video, in seconds.
        max_needle: the longest target clip, in seconds (a longer target needs an evidence span).
        margin: seconds added before and after an evidence span used as the clip.
        fps: frame rate of the written videos (the candidate grid is 1 fps: a few frames a second suffice).
        size: ``(width, height)`` of the written videos, both even.
        question: ``source`` (the target's question) or ``when`` (which quarter shows ``describe``).
        describe: with ``when``: the target's field describing the clip (``meta.caption``, ``answer_text``...).
        gop_seconds: keyframe interval of the written videos.
        crf: H.264 quality (lower is better, larger files).
        seed: everything random is drawn from it.
    """

    count: Annotated[int, AT_LEAST_1] = 100
    duration: Annotated[float, POSITIVE] = 600.0
    haystack_clip: Annotated[float, POSITIVE] = 60.0
    max_needle: Annotated[float, POSITIVE] = 60.0
    margin: Annotated[float, AT_LEAST_0] = 1.0
    fps: Annotated[float, POSITIVE] = 4.0
    size: tuple[int, int] = (640, 360)
    question: QuestionKind = "source"
    describe: str | None = None
    gop_seconds: Annotated[float, POSITIVE] = 2.0
    crf: Annotated[int, Bounds(0, 51, why="libx264's quality scale")] = 23
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation
        # What one annotation cannot say: two sides, both even (yuv420p), and the checks across fields.
        if len(self.size) != 2 or min(self.size) < 16 or any(side % 2 for side in self.size):
            raise ValueError(f"size must be (width, height), both even and >= 16, got {self.size!r}")
        if (self.question == "when") != (self.describe is not None):
            raise ValueError("the 'when' question needs describe (the field describing the clip), and only it does")
        limit = self.duration / QUARTERS if self.question == "when" else self.duration
        if self.max_needle >= limit:
            raise ValueError(
                f"max_needle ({self.max_needle:g} s) must be shorter than the video ({self.duration:g} s)"
                + (" divided by 4: the needle must fit in one quarter" if self.question == "when" else "")
            )

    @property
    def frames(self) -> int:
        return round(self.duration * self.fps)


@dataclass(frozen=True)
class Piece:
    """Frames ``[start, start + frames / fps)`` of ``video`` (seconds into it), placed at output frame ``at``."""

    video: str
    start: float
    frames: int
    at: int


@dataclass
class NeedleReport:
    """The outcome of :func:`build_needles`."""

    path: Path
    items: list[QAItem] = field(default_factory=list)
    encoded: int = 0
    """Videos written by this run (the others were already there with the same plan)."""
    unusable: list[tuple[str, str]] = field(default_factory=list)
    """Source items that could not be a needle: ``(id, reason)``."""


def _field(item: QAItem, path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is None:
            return None
    return value


def _clip(item: QAItem, info: VideoInfo, config: NeedleConfig) -> tuple[float, float]:
    """The target clip of ``item`` in seconds; raises ``ValueError`` with the reason it cannot be a needle."""
    if info.duration <= config.max_needle:
        return 0.0, info.duration
    if not item.evidence:
        raise ValueError(
            f"its video lasts {info.duration:.1f} s (more than max_needle {config.max_needle:g} s) and it has no "
            "evidence span to cut a clip from"
        )
    start, end = item.evidence[0]
    start, end = max(0.0, start - config.margin), min(info.duration, end + config.margin)
    if end - start > config.max_needle or end <= start:
        raise ValueError(
            f"its evidence span with margins ({start:.1f}-{end:.1f} s) is not a clip of at most {config.max_needle:g} s"
        )
    return start, end


def plan_needle(
    index: int,
    target: QAItem,
    target_info: VideoInfo,
    pool: Sequence[tuple[str, VideoInfo]],
    config: NeedleConfig,
) -> dict[str, Any]:
    """The plan of item ``index``: the needle piece, the haystack pieces and the needle's frame span (a
    JSON-serialisable dict; the same arguments give the same plan). ``pool`` holds the haystack videos (the
    target's own video is never used)."""
    rng = random.Random(f"{config.seed}:{index}")
    clip_start, clip_end = _clip(target, target_info, config)
    needle_frames = max(1, min(round((clip_end - clip_start) * config.fps), config.frames - 1))
    haystack_frames = config.frames - needle_frames
    own = str(Path(target.video).expanduser().resolve())
    candidates = [(video, info) for video, info in pool if str(Path(video).expanduser().resolve()) != own]
    if not candidates:
        raise ValueError("no haystack video besides the target's own")
    if config.question == "when":
        quarter = rng.randrange(QUARTERS)
        low = math.ceil(quarter * config.frames / QUARTERS)
        high = math.floor((quarter + 1) * config.frames / QUARTERS) - needle_frames
        insert_at = rng.randint(low, max(low, high))
    else:
        quarter = None
        insert_at = rng.randint(0, haystack_frames)
    pieces: list[Piece] = []
    filled = 0
    piece_frames = max(1, round(config.haystack_clip * config.fps))
    while filled < haystack_frames:
        video, info = candidates[rng.randrange(len(candidates))]
        available = max(1, math.floor(info.duration * config.fps))
        frames = min(piece_frames, available, haystack_frames - filled)
        start = rng.randint(0, available - frames) / config.fps
        pieces.append(Piece(video, start, frames, filled))
        filled += frames
    # Output positions: haystack frames before insert_at stay, later ones move after the needle.
    layout: list[Piece] = []
    for piece in pieces:
        before = max(0, min(piece.frames, insert_at - piece.at))
        if before:
            layout.append(Piece(piece.video, piece.start, before, piece.at))
        if piece.frames - before:
            layout.append(
                Piece(
                    piece.video,
                    piece.start + before / config.fps,
                    piece.frames - before,
                    piece.at + before + needle_frames,
                )
            )
    needle = Piece(target.video, clip_start, needle_frames, insert_at)
    layout.append(needle)
    layout.sort(key=lambda piece: piece.at)
    return {
        "index": index,
        "target": {"id": target.id, "source": target.source, "video": target.video, "clip": [clip_start, clip_end]},
        "needle_frames": [insert_at, insert_at + needle_frames],
        "quarter": quarter,
        "pieces": [{**asdict(piece), "role": "needle" if piece is needle else "haystack"} for piece in layout],
        "fps": config.fps,
        "size": list(config.size),
        "gop_seconds": config.gop_seconds,
        "crf": config.crf,
    }


def _letterbox(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frames`` (already scaled to fit) centred on black ``size`` canvases."""
    width, height = size
    count, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    canvas = np.zeros((count, height, width, 3), dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[:, top : top + h, left : left + w] = frames
    return canvas


def _fit(info: VideoInfo, size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of ``info``'s frames scaled to fit in ``size``, aspect kept, both even."""
    width, height = size
    scale = min(width / info.width, height / info.height)
    fit_w = min(width, max(2, round(info.width * scale / 2) * 2))
    fit_h = min(height, max(2, round(info.height * scale / 2) * 2))
    return fit_h, fit_w


def _encode(path: Path, plan: dict[str, Any], infos: dict[str, VideoInfo], config: NeedleConfig) -> None:
    rate = Fraction(config.fps).limit_denominator(1001)
    gop = max(1, round(config.gop_seconds * config.fps))
    with atomic_file(path) as file:
        number = _write_frames(file, plan, infos, config, rate, gop)
        if number != config.frames:  # raised inside the block: the planned file is never left half right
            raise RuntimeError(f"{path}: wrote {number} frames, planned {config.frames}")


def _write_frames(
    file: Any, plan: dict[str, Any], infos: dict[str, VideoInfo], config: NeedleConfig, rate: Fraction, gop: int
) -> int:
    import av  # imported on use

    width, height = config.size
    with av.open(file, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.gop_size = gop
        stream.options = {
            "preset": "veryfast",
            "crf": str(config.crf),
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        number = 0
        for piece in plan["pieces"]:
            info = infos[piece["video"]]
            times = piece["start"] + np.arange(piece["frames"]) / config.fps
            times = np.minimum(times, max(0.0, info.duration - 1e-3))  # never past the last frame's display
            for batch in iter_frames(piece["video"], times, size=_fit(info, config.size), batch_size=32):
                for pixels in _letterbox(batch, config.size):
                    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                    frame.pts = number
                    frame.time_base = 1 / rate
                    container.mux(stream.encode(frame))
                    number += 1
        container.mux(stream.encode(None))
    return number


def _question(target: QAItem, plan: dict[str, Any], config: NeedleConfig) -> dict[str, Any]:
    if config.question == "source":
        return {
            "question": target.question,
            "options": target.options,
            "answer": target.answer,
            "task": target.task or NEEDLE_SOURCE,
            "categories": dict(target.categories),
        }
    description = _field(target, config.describe or "")
    quarter_seconds = config.duration / QUARTERS
    options = tuple(
        f"{format_clock(q * quarter_seconds)}-{format_clock((q + 1) * quarter_seconds)}" for q in range(QUARTERS)
    )
    return {
        "question": f"When does the video show {str(description).strip().rstrip('.')}?",
        "options": options,
        "answer": option_letters(QUARTERS)[plan["quarter"]],
        "task": "needle_when",
        "categories": {"needle_question": "when"},
    }


def build_needles(
    sources: Sequence[QAItem],
    out_dir: str | Path,
    config: NeedleConfig,
    *,
    haystack: Sequence[str | Path] = (),
    progress: bool = False,
) -> NeedleReport:
    """Make ``config.count`` needle items from the QA items ``sources`` into ``out_dir``: ``videos/needle-NNNNN.mp4``
    and ``needle_qa.jsonl`` (see the module notes); return the report.

    ``haystack``: the videos to cut haystacks from; empty: the videos of ``sources``. Source items without an
    answer, with an unreadable video, or with no clip of at most ``max_needle`` seconds are not used (listed in
    the report); raises ``ValueError`` when no source is usable or there is no haystack video.
    """
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    report = NeedleReport(path=out / QA_FILE)
    infos: dict[str, VideoInfo] = {}
    bad_videos: dict[str, str] = {}

    def info_of(video: str) -> VideoInfo | None:
        if video not in infos and video not in bad_videos:
            try:
                infos[video] = probe(video)
            except VideoError as err:
                bad_videos[video] = f"{type(err).__name__}: {err}"
        return infos.get(video)

    usable: list[QAItem] = []
    for item in sources:
        if item.answer is None and config.question == "source":
            report.unusable.append((item.id, "no answer letter"))
            continue
        if config.question == "when" and _field(item, config.describe or "") in (None, ""):
            report.unusable.append((item.id, f"no {config.describe} to describe its clip"))
            continue
        info = info_of(item.video)
        if info is None:
            report.unusable.append((item.id, bad_videos[item.video]))
            continue
        try:
            _clip(item, info, config)
        except ValueError as err:
            report.unusable.append((item.id, str(err)))
            continue
        usable.append(item)
    if not usable:
        raise ValueError(f"none of the {len(sources)} source items can be a needle: {report.unusable[:3]}")
    pool_videos = [str(v) for v in haystack] or list(dict.fromkeys(item.video for item in sources))
    pool = [(video, info) for video in pool_videos if (info := info_of(video)) is not None and info.duration > 0]
    if not pool:
        raise ValueError("no readable haystack video")
    order = list(range(len(usable)))
    random.Random(f"{config.seed}:order").shuffle(order)
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("needles", total=config.count)
        for index in range(config.count):
            target = usable[order[index % len(order)]]
            plan = plan_needle(index, target, infos[target.video], pool, config)
            video = out / "videos" / f"needle-{index:05d}.mp4"
            plan_file = video.with_name(f"{video.stem}.plan.json")
            plan_text = json.dumps(plan, sort_keys=True)
            if not (video.is_file() and plan_file.is_file() and plan_file.read_text(encoding="utf-8") == plan_text):
                _encode(video, plan, infos, config)
                write_text_atomically(plan_file, plan_text)
                report.encoded += 1
            report.items.append(_item(index, target, plan, video, config))
            bar.advance(task)
    write_qa_jsonl(report.path, report.items, relative_to=out)
    return report


def _item(index: int, target: QAItem, plan: dict[str, Any], video: Path, config: NeedleConfig) -> QAItem:
    first, last = plan["needle_frames"]
    question = _question(target, plan, config)
    sources = list(dict.fromkeys(piece["video"] for piece in plan["pieces"]))
    return QAItem(
        id=f"needle-{index:05d}",
        video=str(video),
        question=question["question"],
        options=tuple(question["options"]),
        answer=question["answer"],
        duration=config.frames / config.fps,
        source=NEEDLE_SOURCE,
        task=question["task"],
        categories=question["categories"],
        evidence=((first / config.fps, last / config.fps),),
        meta={
            "needle": {
                "target": plan["target"],
                "sources": sources,
                "haystack": [piece for piece in plan["pieces"] if piece["role"] == "haystack"],
                "question": config.question,
                "seed": config.seed,
                "index": index,
            }
        },
    )
