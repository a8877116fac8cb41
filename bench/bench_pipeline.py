"""Stage timings of `VideoQA.ask` on a generated 30-minute video with the tiny random models.

Two configurations side by side in one run: MLLM frames decoded from the video (``--no-store-frames``) and read
from the frame store built in the indexing pass (the default since issue #16). Each asks several questions about
the same video: the first indexes it (decode + encode the 1-fps candidates, cached), the later ones find it in the
cache. For each, the time of every stage and the share taken by everything except the MLLM (``query_reasoning``
and ``answer`` are the MLLM's turns). Goal: on a cached video, everything except the MLLM under 100 ms here.

Run: ``python bench/bench_pipeline.py [--minutes 30] [-k 32] [--sampler bolt]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import long_video
from bench_stage2 import machine_line, tiny_model_dirs
from msjoe.cache import FeatureCache
from msjoe.features import DualEncoder
from msjoe.mllm import GenerationConfig, load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA

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
    clip_dir, qwen_dir = tiny_model_dirs()
    encoder = DualEncoder.from_pretrained(str(clip_dir))
    mllm = load_mllm(str(qwen_dir))
    config = PipelineConfig(
        k=args.k,
        sampler=args.sampler,
        query_generation=GenerationConfig(max_new_tokens=16),
        answer_generation=GenerationConfig(max_new_tokens=4),
    )
    results = {}
    for store_frames in (False, True):
        config = replace(config, store_frames=store_frames)
        with tempfile.TemporaryDirectory() as cache_dir:
            qa = VideoQA(encoder, mllm, FeatureCache(cache_dir), config)
            first = qa.ask(video, "What colour is the screen when the square is dark?", OPTIONS).timings
            cached = [qa.ask(video, f"Question {i}: what is on screen?", OPTIONS).timings for i in range(args.repeats)]
        cached.sort(key=non_mllm)
        results[store_frames] = (first, cached[len(cached) // 2])

    print(f"\nvideo: {video.name} ({args.minutes:g} min), K = {args.k}, sampler = {args.sampler}\n")
    print("| stage (ms) | first, --no-store-frames | cached, --no-store-frames | first, default | cached, default |")
    print("|---|---:|---:|---:|---:|")
    columns = [*results[False], *results[True]]
    for stage in dict.fromkeys(s for timings in columns for s in timings):
        mark = " (MLLM)" if stage in MLLM_STAGES else ""
        print(f"| {stage}{mark} | " + " | ".join(f"{t.get(stage, 0) * 1e3:.1f}" for t in columns) + " |")
    print("| **everything except the MLLM** | " + " | ".join(f"**{non_mllm(t) * 1e3:.1f}**" for t in columns) + " |")
    print("| share of the total | " + " | ".join(f"{non_mllm(t) / sum(t.values()):.0%}" for t in columns) + " |")
    print(f"\n(cached = median of {args.repeats} later questions by their non-MLLM time)")
    print(f"command: python bench/bench_pipeline.py --minutes {args.minutes:g} -k {args.k} --sampler {args.sampler}")
    print(f"machine after: {machine_line()}")


def non_mllm(timings: dict[str, float]) -> float:
    return sum(v for stage, v in timings.items() if stage not in MLLM_STAGES)


if __name__ == "__main__":
    main()
