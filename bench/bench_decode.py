"""Benchmark: decoding the 1-fps candidate frames of a long video, msjoe.video against other decoders.

The video is the cached synthetic 640x360 H.264, 25 fps, GOP 250 (a keyframe every 10 s) from
``bench/_longvideo.py``; the targets are ``candidate_timestamps(probe(video))``: 1 fps, the middle of each
second (3600 frames for an hour). Every method returns RGB frames resized so the short side is 224 (398x224;
``--size native`` keeps 640x360) and each returned frame's barcode is checked against the frame that is
displayed at its timestamp, so a fast but wrong method shows up in the "exact" column.

Each method runs in its own child process, so its peak RSS (``ru_maxrss``) is its own; "decode MB" is the
peak minus the RSS after imports, i.e. what decoding added. Times exclude imports but include opening the file.

    python bench/bench_decode.py [--minutes 60] [--methods ours pyav-loop ...] [--size 224|native]

Methods that cannot be imported here are listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import FPS, long_video
from msjoe.synthetic_video import BARCODE_BITS, read_frame_index
from msjoe.video import candidate_timestamps, probe

CHUNK = 64  # frames a method hands over at a time (and then drops): the same bounded-memory use for all

Frames = Iterator[np.ndarray]  # yields [B, H, W, 3] RGB uint8 batches (or single frames, [H, W, 3])


# --- the contenders --------------------------------------------------------------------------------------------
# Each takes (path, timestamps in seconds, (height, width) or None) and yields the frames in timestamp order.


def run_ours(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    from msjoe.video import iter_frames

    yield from iter_frames(path, times, size=hw, batch_size=CHUNK)


def _pyav_loop(path: str, times: np.ndarray, hw: tuple[int, int] | None, thread_type: str) -> Frames:
    """What one writes by hand: decode every frame, convert the one displayed at each target."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = thread_type
        height, width = hw if hw is not None else (stream.codec_context.height, stream.codec_context.width)
        time_base = float(stream.time_base)
        start = stream.start_time or 0
        j, previous = 0, None
        for frame in container.decode(stream):
            seconds = (frame.pts - start) * time_base
            while j < len(times) and seconds > times[j] + 1e-6:  # `previous` is displayed at times[j]
                yield previous.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
                j += 1
            if j == len(times):
                return
            previous = frame
        for _ in range(j, len(times)):
            yield previous.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")


def run_pyav_loop(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    yield from _pyav_loop(path, times, hw, "SLICE")  # PyAV's default threading


def run_pyav_loop_threads(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    yield from _pyav_loop(path, times, hw, "AUTO")  # frame + slice threads


def _cv2_output(bgr: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    import cv2

    if hw is not None:
        bgr = cv2.resize(bgr, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def run_opencv(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    """grab() every frame (decode, no conversion), retrieve() the targets."""
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        wanted = np.floor(times * fps + 1e-6).astype(np.int64)  # frame index displayed at t (constant rate)
        index, j = -1, 0
        while j < len(wanted):
            if not capture.grab():
                break
            index += 1
            if index == wanted[j]:
                _, bgr = capture.retrieve()
                frame = _cv2_output(bgr, hw)
                while j < len(wanted) and wanted[j] == index:
                    yield frame
                    j += 1
    finally:
        capture.release()


def run_opencv_seek(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    """CAP_PROP_POS_MSEC seek before every target, then read()."""
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        for t in times:
            capture.set(cv2.CAP_PROP_POS_MSEC, float(t) * 1000.0)
            ok, bgr = capture.read()
            if not ok:
                raise RuntimeError(f"OpenCV could not read the frame at {t:.3f} s")
            yield _cv2_output(bgr, hw)
    finally:
        capture.release()


def run_torchcodec(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    """torchcodec's exact mode, its FFmpeg threads on (0 = auto; its default is 1), resize inside the decoder."""
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    transforms = [Resize(size=hw)] if hw is not None else None
    decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=0, transforms=transforms)
    for begin in range(0, len(times), CHUNK):
        yield decoder.get_frames_played_at(seconds=times[begin : begin + CHUNK].tolist()).data.numpy()


def run_decord(path: str, times: np.ndarray, hw: tuple[int, int] | None) -> Frames:
    """decord's frame-index API (exact for constant frame rate), resize inside the decoder, threads auto."""
    import decord

    height, width = hw if hw is not None else (-1, -1)
    reader = decord.VideoReader(path, width=width, height=height, num_threads=0)
    wanted = np.floor(times * reader.get_avg_fps() + 1e-6).astype(np.int64)
    for begin in range(0, len(wanted), CHUNK):
        yield reader.get_batch(wanted[begin : begin + CHUNK].tolist()).asnumpy()


METHODS: dict[str, Callable[[str, np.ndarray, tuple[int, int] | None], Frames]] = {
    "ours": run_ours,
    "pyav-loop": run_pyav_loop,
    "pyav-loop-threads": run_pyav_loop_threads,
    "opencv": run_opencv,
    "opencv-seek": run_opencv_seek,
    "torchcodec": run_torchcodec,
    "decord": run_decord,
}
IMPORTS = {"opencv": "cv2", "opencv-seek": "cv2", "torchcodec": "torchcodec.decoders", "decord": "decord"}


# --- one measurement, in a child process -----------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(method: str, path: str, size: str) -> dict:
    """Decode in this process and report time, peak memory and exactness (as JSON on stdout)."""
    module = IMPORTS.get(method)
    if module is not None:
        try:
            __import__(module)
        except Exception as error:  # ImportError, or a missing shared library (OSError) for torchcodec
            return {"method": method, "skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    info = probe(path)
    times = candidate_timestamps(info)
    hw = None if size == "native" else (int(size), 2 * round(int(size) * info.width / info.height / 2))
    expected = np.minimum(np.floor(times * FPS + 1e-6).astype(np.int64), info.num_frames - 1)
    expected %= 2**BARCODE_BITS  # the barcode wraps after 65536 frames (43 min at 25 fps)
    rss_before = peak_rss_mb()
    cpu_before = os.times()
    start = time.perf_counter()
    got, shape = [], None
    for batch in METHODS[method](path, times, hw):
        batch = batch if batch.ndim == 4 else batch[None]
        shape = batch.shape[1:]
        got.extend(read_frame_index(frame) for frame in batch)
    seconds = time.perf_counter() - start
    cpu = os.times()
    return {
        "method": method,
        "seconds": seconds,
        "cpu_seconds": (cpu.user - cpu_before.user) + (cpu.system - cpu_before.system),
        "frames": len(got),
        "exact": int(np.sum(np.asarray(got[: len(expected)]) == expected[: len(got)])),
        "next_frame": int(np.sum(np.asarray(got[: len(expected)]) == expected[: len(got)] + 1)),
        "targets": len(expected),
        "shape": list(shape) if shape else None,
        "peak_rss_mb": peak_rss_mb(),
        "decode_rss_mb": peak_rss_mb() - rss_before,
    }


def measure(method: str, path: Path, size: str) -> dict:
    command = [sys.executable, __file__, "--child", method, "--video", str(path), "--size", size]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "skipped": f"failed: {last[:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report ----------------------------------------------------------------------------------------------------


def report(results: list[dict], minutes: float, size: str, memory: list[dict]) -> str:
    ran = [r for r in results if "skipped" not in r]
    lines = [
        f"Decoding the 1-fps candidates of a {minutes:g}-min 640x360 H.264 video (25 fps, GOP 250), "
        f"output {'native 640x360' if size == 'native' else f'short side {size}'}; best of the repeats; "
        f"{os.cpu_count()} CPU cores.",
        "",
        "| method | seconds | frames/s | vs fastest other | exact frames | CPU s | peak RSS MB | decode MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(ran, key=lambda r: r["seconds"]):
        others = [o["seconds"] for o in ran if o["method"] != r["method"]]
        ratio = f"{r['seconds'] / min(others):.2f}x" if others else "-"
        exact = f"{r['exact']}/{r['targets']}" + (f" ({r['next_frame']} next frame)" if r["next_frame"] else "")
        lines.append(
            f"| {r['method']} | {r['seconds']:.2f} | {r['frames'] / r['seconds']:.0f} | {ratio} | "
            f"{exact} | {r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['decode_rss_mb']:.0f} |"
        )
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | | | | |")
    if memory:
        lines += ["", "Peak memory of `ours` against video length (same 1-fps targets, same output size):", ""]
        lines += ["| video | frames | seconds | peak RSS MB | decode MB |", "| --- | ---: | ---: | ---: | ---: |"]
        for m in memory:
            lines.append(
                f"| {m['minutes']:g} min | {m['frames']} | {m['seconds']:.2f} | {m['peak_rss_mb']:.0f} | "
                f"{m['decode_rss_mb']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Decode the 1-fps candidates of a long video with several decoders.")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the benchmark video")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--size", default="224", help="short side of the output frames, or 'native'")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest is reported")
    parser.add_argument(
        "--memory-minutes", type=float, nargs="*", default=[10.0], help="shorter videos to compare ours' peak memory"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.video, args.size)))
        return

    path = long_video(args.minutes)
    print(f"video: {path}", flush=True)
    # Rounds over all methods rather than all repeats of one method at a time, so that a burst of load from
    # elsewhere on the machine hits every method alike; the fastest run of each method is reported.
    runs: dict[str, list[dict]] = {method: [] for method in args.methods}
    for round_index in range(args.repeat):
        for method in args.methods:
            if runs[method] and "skipped" in runs[method][0]:
                continue
            run = measure(method, path, args.size)
            runs[method].append(run)
            outcome = run["skipped"] if "skipped" in run else f"{run['seconds']:.2f} s"
            print(f"  round {round_index + 1} {method}: {outcome}", flush=True)
    results = []
    for method_runs in runs.values():
        ok = [r for r in method_runs if "skipped" not in r]
        best = dict(min(ok, key=lambda r: r["seconds"])) if ok else method_runs[0]
        if ok:
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
            best["decode_rss_mb"] = max(r["decode_rss_mb"] for r in ok)
        results.append(best)

    memory = []
    if "ours" in args.methods:
        for minutes in sorted({*args.memory_minutes, args.minutes}):
            run = measure("ours", long_video(minutes), args.size)
            if "skipped" not in run:
                memory.append({"minutes": minutes, **run})

    print()
    print(report(results, args.minutes, args.size, memory))
    command = ["python", "bench/bench_decode.py", *sys.argv[1:]]
    print(f"\nCommand: `{' '.join(command)}`")


if __name__ == "__main__":
    main()
