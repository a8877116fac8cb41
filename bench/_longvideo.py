"""The long synthetic benchmark video: generated once with :func:`msjoe.synthetic_video.write_video`, cached.

The cache lives in ``bench/.cache/`` (git-ignored). A file is written under a temporary name and renamed when
complete, so an interrupted generation never leaves a half-written video that later runs would trust.

Run directly to pre-generate: ``python bench/_longvideo.py --minutes 60``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from msjoe.synthetic_video import write_video

CACHE_DIR = Path(__file__).resolve().parent / ".cache"

# The benchmark's reference video: 360p H.264 at 25 fps with a keyframe every 10 s (GOP 250), typical of the
# long web videos of video-QA benchmarks.
WIDTH, HEIGHT = 640, 360
FPS = 25
GOP = 250


def long_video(minutes: float = 60.0, *, verbose: bool = True) -> Path:
    """Path of the cached ``minutes``-long benchmark video, generating it first if needed (minutes for an hour)."""
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    path = CACHE_DIR / f"synthetic_{minutes:g}min_{WIDTH}x{HEIGHT}_{FPS}fps_gop{GOP}_h264.mp4"
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.mp4")
    if verbose:
        print(f"generating {path.name} (once; cached in {CACHE_DIR}) ...", flush=True)
    start = time.perf_counter()
    write_video(
        partial,
        duration=minutes * 60.0,
        fps=FPS,
        size=(WIDTH, HEIGHT),
        codec="libx264",
        gop=GOP,
        options={"preset": "ultrafast"},
    )
    partial.replace(path)
    if verbose:
        print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[60.0])
    for minutes in parser.parse_args().minutes:
        print(long_video(minutes))


if __name__ == "__main__":
    main()
