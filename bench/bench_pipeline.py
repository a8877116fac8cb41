"""Stage timings of `VideoQA.ask` on a generated 30-minute video with the tiny random models.

Two questions on the same video: the first indexes it (decode + encode the 1-fps candidates, cached), the second
finds it in the cache. For each, the time of every stage and the share taken by everything except the MLLM
(``query_reasoning`` and ``answer`` are the MLLM's turns). Goal: on a cached video, everything except the MLLM
under 100 ms here.

Run: ``python bench/bench_pipeline.py [--minutes 30] [-k 32] [--sampler bolt]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import CACHE_DIR, long_video
from msjoe.cache import FeatureCache
from msjoe.features import DualEncoder
from msjoe.mllm import GenerationConfig, load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA
from msjoe.tiny_models.clip import write_tiny_clip
from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl

MLLM_STAGES = ("query_reasoning", "answer")
OPTIONS = ["a red screen", "a green screen", "a blue screen", "a white square"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("--sampler", default="bolt")
    parser.add_argument("--repeats", type=int, default=3, help="cached questions to time (the median is shown)")
    args = parser.parse_args()

    video = long_video(args.minutes)
    models = CACHE_DIR / "tiny-models"
    clip_dir, qwen_dir = models / "clip", models / "qwen2_5_vl"
    if not (clip_dir / "config.json").exists():
        write_tiny_clip(clip_dir)
    if not (qwen_dir / "config.json").exists():
        write_tiny_qwen2_5_vl(qwen_dir)
    encoder = DualEncoder.from_pretrained(str(clip_dir))
    mllm = load_mllm(str(qwen_dir))
    config = PipelineConfig(
        k=args.k,
        sampler=args.sampler,
        query_generation=GenerationConfig(max_new_tokens=16),
        answer_generation=GenerationConfig(max_new_tokens=4),
    )
    with tempfile.TemporaryDirectory() as cache_dir:
        qa = VideoQA(encoder, mllm, FeatureCache(cache_dir), config)
        start = time.perf_counter()
        first = qa.ask(video, "What colour is the screen when the square is dark?", OPTIONS).timings
        first_wall = time.perf_counter() - start
        cached = [qa.ask(video, f"Question {i}: what is on screen?", OPTIONS).timings for i in range(args.repeats)]
    cached.sort(key=lambda t: sum(v for s, v in t.items() if s not in MLLM_STAGES))
    second = cached[len(cached) // 2]

    stages = list(dict.fromkeys([*first, *second]))
    print(f"\nvideo: {video.name} ({args.minutes:g} min), K = {args.k}, sampler = {args.sampler}\n")
    print(f"| stage | first question (ms) | cached video (ms, median of {args.repeats}) |")
    print("|---|---:|---:|")
    for stage in stages:
        mark = " (MLLM)" if stage in MLLM_STAGES else ""
        print(f"| {stage}{mark} | {first.get(stage, 0) * 1e3:.1f} | {second.get(stage, 0) * 1e3:.1f} |")
    for name, timings in (("first question", first), ("cached video", second)):
        total = sum(timings.values())
        other = sum(v for s, v in timings.items() if s not in MLLM_STAGES)
        print(
            f"\n{name}: total {total * 1e3:.0f} ms, "
            f"everything except the MLLM {other * 1e3:.1f} ms ({other / total:.0%})"
        )
    print(f"\nfirst question wall time {first_wall:.1f} s")
    print(f"command: python bench/bench_pipeline.py --minutes {args.minutes:g} -k {args.k} --sampler {args.sampler}")


if __name__ == "__main__":
    main()
