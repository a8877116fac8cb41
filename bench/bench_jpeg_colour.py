"""Benchmark: the frame store's two colour conversions per frame, and the one-conversion alternative.

Today a stored frame is converted YUV -> RGB by swscale (``msjoe.video``'s converter, at the store's size) and then
RGB -> YCbCr by libjpeg inside ``encode_jpegs``. The alternative asks swscale for full-range YCbCr 4:4:4
(``yuvj444p``) and hands that to libjpeg as a ``YCbCr`` image, which libjpeg stores without converting. Both start
from the same frame already scaled to the store's size in the video's YUV (the part that is shared), on the first
``--frames`` frames of the 640x360 benchmark video. Reported: ms per frame for each step, and how far the
alternative's stored JPEGs decode from today's (levels of 255) and whether any bytes are identical.

    python bench/bench_jpeg_colour.py [--frames 300]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import long_video
from msjoe.frame_store import DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, budget_frame_size, encode_jpegs


def ms_per_frame(step, items: list) -> tuple[float, list]:
    start = time.perf_counter()
    results = [step(item) for item in items]
    return (time.perf_counter() - start) / len(items) * 1000, results


def jpeg_from_ycbcr(planes: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    interleaved = np.ascontiguousarray(np.moveaxis(planes, 0, -1))
    Image.fromarray(interleaved, mode="YCbCr").save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    with av.open(str(long_video(30.0))) as container:
        frames = [frame for _, frame in zip(range(args.frames), container.decode(video=0), strict=False)]
    height, width = budget_frame_size(frames[0].height, frames[0].width, DEFAULT_MAX_PIXELS)
    scaler, to_rgb, to_ycbcr = VideoReformatter(), VideoReformatter(), VideoReformatter()
    scaled = [
        scaler.reformat(f, width=width, height=height, interpolation=Interpolation.AREA, dst_color_range=f.color_range)
        for f in frames
    ]
    rgb_ms, rgbs = ms_per_frame(lambda f: to_rgb.reformat(f, format="rgb24").to_ndarray(), scaled)
    rgb_jpeg_ms, today = ms_per_frame(lambda rgb: encode_jpegs(rgb[None], DEFAULT_QUALITY)[0], rgbs)
    ycbcr_ms, planes = ms_per_frame(lambda f: to_ycbcr.reformat(f, format="yuvj444p").to_ndarray(), scaled)
    ycbcr_jpeg_ms, alternative = ms_per_frame(
        lambda p: jpeg_from_ycbcr(p.reshape(3, height, width), DEFAULT_QUALITY), planes
    )
    errors = [
        np.abs(np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=int) - np.asarray(Image.open(io.BytesIO(b))))
        for a, b in zip(alternative, today, strict=True)
    ]
    first = frames[0]
    print(f"{len(frames)} frames of {first.width}x{first.height} {first.format.name}, stored at {width}x{height}")
    today_ms, alternative_ms = rgb_ms + rgb_jpeg_ms, ycbcr_ms + ycbcr_jpeg_ms
    print(f"today:       YUV->RGB {rgb_ms:.2f} ms + JPEG from RGB {rgb_jpeg_ms:.2f} ms = {today_ms:.2f} ms/frame")
    print(f"alternative: YUV->YCbCr {ycbcr_ms:.2f} ms + JPEG from YCbCr {ycbcr_jpeg_ms:.2f} ms = {alternative_ms:.2f}")
    identical = sum(a == b for a, b in zip(alternative, today, strict=True))
    mean_error, max_error = np.mean([e.mean() for e in errors]), max(e.max() for e in errors)
    print(
        f"identical JPEGs: {identical}/{len(today)}; decoded difference: mean {mean_error:.2f}, max {max_error} levels"
    )


if __name__ == "__main__":
    main()
