"""The long synthetic benchmark video: generated once with :func:`msjoe.synthetic_video.write_video`, cached.

The cache lives in ``bench/.cache/`` (git-ignored). A file is written under a temporary name and renamed when
complete, so an interrupted generation never leaves a half-written video that later runs would trust.

Run directly to pre-generate: ``python bench/_longvideo.py --minutes 60``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise
from pathlib import Path

import av

from msjoe.decode_worker import without_main_module
from msjoe.synthetic_video import write_video

CACHE_DIR = Path(__file__).resolve().parent / ".cache"

# The benchmark's reference video: 360p H.264 at 25 fps with a keyframe every 10 s (GOP 250), typical of the
# long web videos of video-QA benchmarks.
WIDTH, HEIGHT = 640, 360
FPS = 25
GOP = 250


def long_video(minutes: float = 60.0, *, verbose: bool = True, parts: int = 1, folder: Path = CACHE_DIR) -> Path:
    """Path of the cached ``minutes``-long benchmark video, generating it first if needed (minutes for an hour).

    ``parts > 1`` renders that many consecutive pieces in parallel processes and joins them by remuxing (no
    re-encoding): the same frames, timestamps and keyframe grid as one sequential encode (each piece starts on a
    keyframe), in a fraction of the time on a many-core machine.
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    path = folder / f"synthetic_{minutes:g}min_{WIDTH}x{HEIGHT}_{FPS}fps_gop{GOP}_h264.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.mp4")
    if verbose:
        print(f"generating {path.name} (once; cached in {folder}) ...", flush=True)
    start = time.perf_counter()
    total = round(minutes * 60.0 * FPS)
    # Pieces of whole GOPs, so that each starts with a keyframe exactly where a single encode would put one.
    gops = -(-total // GOP)
    bounds = [min(total, GOP * (gops * i // parts)) for i in range(parts + 1)]
    pieces = [
        (partial.with_name(f"{path.stem}.part{i}.mp4"), a, b) for i, (a, b) in enumerate(pairwise(bounds)) if b > a
    ]
    if len(pieces) == 1:
        _write_piece(partial, 0, total)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(pieces), mp_context=context) as pool, without_main_module():
            list(pool.map(_write_piece, *zip(*pieces, strict=True)))
        _join(partial, [piece for piece, _, _ in pieces])
        for piece, _, _ in pieces:
            piece.unlink()
    partial.replace(path)
    if verbose:
        print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def _write_piece(path: Path, first: int, end: int) -> Path:
    return write_video(
        path,
        duration=(end - first) / FPS,
        fps=FPS,
        size=(WIDTH, HEIGHT),
        codec="libx264",
        gop=GOP,
        options={"preset": "ultrafast"},
        first_frame=first,
    )


def _join(path: Path, pieces: list[Path]) -> None:
    """Remux ``pieces`` (consecutive, same encoder settings, timestamps already global) into one file."""
    with av.open(str(path), mode="w") as output:
        stream = None
        for piece in pieces:
            with av.open(str(piece)) as source:
                source_stream = source.streams.video[0]
                if stream is None:
                    stream = output.add_stream_from_template(source_stream)
                for packet in source.demux(source_stream):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = stream
                    output.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[60.0])
    parser.add_argument("--parts", type=int, default=1, help="pieces generated in parallel processes")
    args = parser.parse_args()
    for minutes in args.minutes:
        print(long_video(minutes, parts=args.parts))


if __name__ == "__main__":
    main()
