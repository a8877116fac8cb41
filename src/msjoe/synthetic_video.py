"""Synthetic videos with known content, for tests, benchmarks and the offline demo.

Each frame carries its own index as a 16-bit barcode in a band at the top (white block = 1, most significant
bit first), so a decoded frame can be identified exactly with :func:`read_frame_index`. Below the band, the
background colour names the current *event* (a time span given by the caller) or a slowly drifting grey, and a
moving square gives the encoder real motion to code.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BARCODE_BITS = 16


@dataclass(frozen=True)
class Event:
    """A span ``[start, end)`` in seconds during which the background has ``color`` (RGB)."""

    start: float
    end: float
    color: tuple[int, int, int]


def event_color(i: int) -> tuple[int, int, int]:
    """A saturated colour, distinct for small ``i`` (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.9, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def render_frame(index: int, t: float, width: int, height: int, events: Sequence[Event] = ()) -> np.ndarray:
    """The RGB frame ``index`` shown at ``t`` seconds: barcode band, background, moving square."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    color = next((e.color for e in events if e.start <= t < e.end), None)
    frame[:] = color if color is not None else (60 + (index // 7) % 60,) * 3
    band = max(height // 8, 2)
    block = width // BARCODE_BITS
    frame[:band] = 0
    for bit in range(BARCODE_BITS):
        if (index >> (BARCODE_BITS - 1 - bit)) & 1:
            frame[:band, bit * block : (bit + 1) * block] = 255
    side = max(min(width, height) // 6, 2)
    x = (index * 3) % max(width - side, 1)
    y = band + (index * 2) % max(height - band - side, 1)
    frame[y : y + side, x : x + side] = (255, 255, 255) if color is None else (20, 20, 20)
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """Decode the barcode of a frame rendered by :func:`render_frame` (after any resize that keeps the layout)."""
    height, width = frame.shape[:2]
    band = max(height // 8, 2)
    block = width / BARCODE_BITS
    luma = frame[: max(band - 1, 1)].astype(np.float32).mean(axis=(0, 2))
    value = 0
    for bit in range(BARCODE_BITS):
        lo, hi = int(bit * block + block * 0.25), int(bit * block + block * 0.75)
        value = (value << 1) | int(luma[lo : max(hi, lo + 1)].mean() > 127)
    return value


def write_video(
    path: str | Path,
    *,
    duration: float,
    fps: float = 25.0,
    size: tuple[int, int] = (256, 144),
    codec: str = "libx264",
    gop: int | None = None,
    events: Sequence[Event] = (),
    frame_times: Sequence[float] | None = None,
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
    first_frame: int = 0,
) -> Path:
    """Encode a synthetic video and return its path.

    Args:
        duration: length in seconds (ignored when ``frame_times`` is given).
        fps: nominal frame rate; frames sit at ``i / fps``.
        size: ``(width, height)``; both must be even for 4:2:0 codecs.
        codec: any PyAV encoder name (``libx264``, ``libx265``, ``libvpx-vp9``, ``libsvtav1``, ``mpeg4``...).
        gop: keyframe interval in frames (``None``: the encoder's default).
        events: coloured spans that tests can look for.
        frame_times: explicit presentation times in seconds, for variable-frame-rate videos.
        options: extra encoder options (e.g. ``{"preset": "ultrafast"}``).
        first_frame: index of the first frame (constant rate only): the file holds frames ``first_frame, ...`` of a
            longer video, at their times in it, so parts written in parallel can be joined by remuxing.
    """
    path = Path(path)
    width, height = size
    if frame_times is not None and first_frame:
        raise ValueError("first_frame applies to constant-rate videos, not to explicit frame_times")
    count = round(duration * fps)
    times = list(frame_times) if frame_times is not None else [i / fps for i in range(first_frame, first_frame + count)]
    variable = frame_times is not None
    # Millisecond ticks represent any variable timing; constant-rate videos use 1/fps ticks.
    time_base = Fraction(1, 1000) if variable else Fraction(fps).limit_denominator(1001) ** -1
    with av.open(str(path), mode="w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        opts = {"preset": "ultrafast"} if codec in ("libx264", "libx265") else {}
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"
        if gop is not None and codec == "libx264":
            opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        opts.update(options or {})
        stream.options = opts
        for i, t in enumerate(times, start=first_frame):
            frame = av.VideoFrame.from_ndarray(render_frame(i, t, width, height, events), format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
