"""Frame store vs video decoding for the frames of one question (K key frames + K/2 previews), on a long video.

What a cached-video question needs: the K/2 preview frames at the preview budget (32 * 28 * 28 pixels) and K key
frames at the answer budget (448 * 448), all of them 1-fps candidates. The pipeline decodes them from the video
(``decode_frames``: a seek and up to a GOP of decoding each); with a :class:`~msjoe.frame_store.FrameStore` built
at indexing time it reads them back as JPEGs. Reported: both times (median over random key-frame sets, the
fingerprint of the video included in the store's time since ``read`` computes it), their ratio, the store's
build time and its size on disk, and the JPEG error against the decoded frames.

Run: ``python bench/bench_frame_store.py [--minutes 30] [-k 32] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import long_video
from msjoe.cache import fingerprint
from msjoe.frame_store import FrameStore, budget_frame_size
from msjoe.mllm.prompts import PREVIEW_MAX_PIXELS
from msjoe.pipeline import preview_indices
from msjoe.video import candidate_timestamps, decode_frames, probe

ANSWER_MAX_PIXELS = 448 * 448


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="random key-frame sets for the store (median)")
    parser.add_argument("--decode-repeats", type=int, default=3, help="of these, also decoded from the video")
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()

    video = long_video(args.minutes)
    info = probe(video)
    candidates = candidate_timestamps(info)
    previews = candidates[preview_indices(len(candidates), args.k)]
    rng = np.random.default_rng(0)
    key_sets = [np.sort(rng.choice(candidates, size=args.k, replace=False)) for _ in range(args.repeats)]
    preview_size = budget_frame_size(info.height, info.width, PREVIEW_MAX_PIXELS)
    answer_size = budget_frame_size(info.height, info.width, ANSWER_MAX_PIXELS)

    with tempfile.TemporaryDirectory() as root:
        store = FrameStore(root, quality=args.quality)
        start = time.perf_counter()
        store.build(video)
        build_s = time.perf_counter() - start
        entry = store.path(store.key(video))
        size_mb = entry.stat().st_size / 1e6

        def from_store(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            preview = store.read(video, previews, PREVIEW_MAX_PIXELS)
            frames = store.read(video, keys, ANSWER_MAX_PIXELS)
            assert preview is not None and frames is not None, "the store missed"
            return preview, frames

        def from_video(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return decode_frames(video, previews, preview_size), decode_frames(video, keys, answer_size)

        from_store(key_sets[0])  # warm the page cache and PIL's codec, as a second question would find them
        store_s = statistics.median(_timed(from_store, keys) for keys in key_sets)
        fingerprint_s = statistics.median(_timed(fingerprint, video) for _ in range(5))
        decode_s = statistics.median(_timed(from_video, keys) for keys in key_sets[: args.decode_repeats])

        (stored_preview, stored_keys), (decoded_preview, decoded_keys) = (
            from_store(key_sets[0]),
            from_video(key_sets[0]),
        )
    assert stored_preview.shape == decoded_preview.shape and stored_keys.shape == decoded_keys.shape
    key_error = np.abs(stored_keys.astype(np.int16) - decoded_keys).mean()
    preview_error = np.abs(stored_preview.astype(np.int16) - decoded_preview).mean()

    hours = info.duration / 3600
    print(f"\nvideo: {video.name} ({info.duration / 60:.0f} min, {len(candidates)} candidates), K = {args.k}")
    print(
        f"frames of one question: {len(previews)} previews at {decoded_preview.shape[2]}x{decoded_preview.shape[1]}"
        f" + {args.k} key frames at {decoded_keys.shape[2]}x{decoded_keys.shape[1]}\n"
    )
    print("| path | ms per question |")
    print("|---|---:|")
    print(f"| decode_frames from the video (median of {args.decode_repeats}) | {decode_s * 1e3:.1f} |")
    print(f"| FrameStore.read, 2 calls (median of {args.repeats}) | {store_s * 1e3:.1f} |")
    print(f"| of which 2 fingerprints of the video | {2 * fingerprint_s * 1e3:.1f} |")
    print(f"\nspeed-up: {decode_s / store_s:.1f}x")
    print(f"build (one decode pass + JPEG q{args.quality}): {build_s:.1f} s ({len(candidates) / build_s:.0f} frames/s)")
    print(
        f"entry: {size_mb:.1f} MB ({size_mb / hours:.1f} MB per hour of video, "
        f"{size_mb * 1e3 / len(candidates):.1f} kB a frame)"
    )
    print(
        f"JPEG error vs decoded frames (mean |diff| in 0-255): key frames {key_error:.2f}, previews {preview_error:.2f}"
    )
    print(f"command: python bench/bench_frame_store.py --minutes {args.minutes:g} -k {args.k} --repeats {args.repeats}")


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
