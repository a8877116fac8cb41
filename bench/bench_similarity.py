"""How long a new question on an already indexed hour-long video waits for S = cos(queries, frames).

Goal: well under 50 ms from "the video was indexed before" to the similarity matrix, excluding the text encoder
(whose cost depends only on the model, not on the video). Two scenarios on the one-hour benchmark video
(``bench/_longvideo.py``, 1 fps -> T = 3600 candidates, Nq = 4 queries):

* ``CLIP-L sized``: random unit vectors with D = 768 (the paper's clip-vit-large-patch14 width) stored in a
  feature cache under the real video's fingerprint, to time loading and S at the real size without a real model.
* ``tiny CLIP``: the video actually indexed by the tiny random CLIP (D = 16), the full code path of a user's
  second question: ``index_video`` (cache hit: fingerprint + entry load, nothing decoded) then ``similarity``.

Timed steps (median and 90th percentile over ``--repeats`` warm runs; the entry is in the OS page cache):
fingerprint (3 MiB read + SHA-256), cache load (read + verify checksum + float16 -> float32), similarity,
total = ``index_video`` on a hit + ``similarity``.

Run: ``python bench/bench_similarity.py`` (first run indexes the hour with the tiny CLIP once, about a minute;
the features are kept in ``bench/.cache/features``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import CACHE_DIR, long_video
from msjoe.cache import CacheKey, FeatureCache, FrameFeatures, fingerprint
from msjoe.features import DualEncoder, similarity
from msjoe.index import index_video
from msjoe.tiny_models.clip import write_tiny_clip
from msjoe.video import probe

NUM_QUERIES = 4
CLIP_L_DIM = 768


def timed(function: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Run ``function`` once to warm up, then ``repeats`` times; return the times in ms and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - start) * 1000.0)
    return times, result


def summary(times: list[float]) -> str:
    p90 = float(np.percentile(times, 90))
    return f"{statistics.median(times):.2f} | {p90:.2f}"


def synthetic_scenario(video: Path, repeats: int) -> dict[str, list[float]]:
    """D = 768 random unit vectors stored under the real video's key: loading and S at the real size."""
    info = probe(video)
    timestamps = np.arange(3600, dtype=np.float64) + 0.5
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(len(timestamps), CLIP_L_DIM, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(NUM_QUERIES, CLIP_L_DIM, generator=generator), dim=-1)
    # On a cache hit index_video needs only the encoder's identity (model_id, revision): a stand-in suffices.
    encoder = SimpleNamespace(model_id="synthetic/clip-vit-large-patch14-shaped", revision="random-d768")
    with tempfile.TemporaryDirectory() as root:
        cache = FeatureCache(root)
        key = CacheKey(fingerprint(video), encoder.model_id, encoder.revision, 1.0, 4096)
        cache.put(
            key,
            FrameFeatures(timestamps, embeddings, info, encoder.model_id, encoder.revision, 1.0, 4096),
        )
        print(f"  CLIP-L sized entry: {cache.path(key).stat().st_size / 1e6:.1f} MB", flush=True)
        features = cache.get(key)
        return {
            "fingerprint": timed(lambda: fingerprint(video), repeats)[0],
            "cache load": timed(lambda: cache.get(key), repeats)[0],
            "similarity": timed(lambda: similarity(queries, features.embeddings), repeats)[0],
            "total": timed(lambda: similarity(queries, index_video(video, encoder, cache).embeddings), repeats)[0],
        }


def tiny_clip_scenario(video: Path, repeats: int) -> dict[str, list[float]]:
    """The real code path: the hour indexed by the tiny CLIP, then a second question's index_video + S."""
    model_dir = CACHE_DIR / "tiny-clip"
    if not (model_dir / "config.json").exists():
        write_tiny_clip(model_dir, seed=0)
    encoder = DualEncoder.from_pretrained(str(model_dir))
    cache = FeatureCache(CACHE_DIR / "features")
    start = time.perf_counter()
    features = index_video(video, encoder, cache)
    print(f"  tiny CLIP index (first run indexes, later runs hit): {time.perf_counter() - start:.1f} s", flush=True)
    queries = encoder.encode_texts(["a white square", "a grey background", "a red car", "the start of the video"])
    key = CacheKey(fingerprint(video), encoder.model_id, encoder.revision, 1.0, 4096)
    return {
        "fingerprint": timed(lambda: fingerprint(video), repeats)[0],
        "cache load": timed(lambda: cache.get(key), repeats)[0],
        "similarity": timed(lambda: similarity(queries, features.embeddings), repeats)[0],
        "total": timed(lambda: similarity(queries, index_video(video, encoder, cache).embeddings), repeats)[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the benchmark video")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        # On a loaded machine, multi-threaded small ops wait for descheduled workers (multiples of the scheduler's
        # time slice); one thread shows the cost without that noise.
        torch.set_num_threads(args.threads)

    video = long_video(args.minutes)
    print(f"video: {video.name} ({video.stat().st_size / 1e6:.0f} MB), torch threads: {torch.get_num_threads()}")
    load_before = os.getloadavg()[0]
    results = {
        f"CLIP-L sized (T=3600, D={CLIP_L_DIM})": synthetic_scenario(video, args.repeats),
        "tiny CLIP, real index (T=3600, D=16)": tiny_clip_scenario(video, args.repeats),
    }
    steps = ["fingerprint", "cache load", "similarity", "total"]
    print()
    print(f"Second question on an indexed {args.minutes:g}-minute video, Nq={NUM_QUERIES}, ms (median | p90)")
    print()
    print("| scenario | " + " | ".join(f"{s} (median / p90)" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, timings in results.items():
        cells = [summary(timings[s]).replace(" | ", " / ") for s in steps]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    cores = os.cpu_count()
    print(f"load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} on {cores} cores")
    print("total = index_video on a cache hit (fingerprint + load; nothing decoded) + similarity; goal < 50 ms.")
    threads = f" --threads {args.threads}" if args.threads else ""
    print(f"command: python bench/bench_similarity.py --repeats {args.repeats} --minutes {args.minutes:g}{threads}")


if __name__ == "__main__":
    main()
