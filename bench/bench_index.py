"""Indexing and a cached question, before and after issue #16, side by side in one run (tiny random models).

Configurations, each indexing the same generated video into its own empty cache (they take turns, round by round,
so a change of the machine's load hits them alike):

- ``features only``: the encoder's input alone, in this process (before #16, the default), and with N worker
  processes (``msjoe index --no-store-frames``);
- ``features, then the store (2 passes)``: what ``--store-frames`` did before #16: a second decoding pass for the
  JPEGs (``FrameStore.build`` after ``index_video``);
- ``features + store, 1 pass``: the default now, in this process (``workers=0``);
- ``features + store, 1 pass, N workers``: the default of ``msjoe index`` (decoding and JPEG encoding in N worker
  processes, the encoder here), for each ``--workers`` value.

Reported: indexing seconds (median over rounds) and the ratio to the first configuration, the disk the cache holds
(feature entry, store entry), and the time of everything but the MLLM for a question about the indexed video
(median over ``--questions`` questions, with the tiny Qwen2.5-VL; the store makes the difference: previews and key
frames read from it or sought in the video). Tiny models: the image encoder is nearly free here, so this measures
decoding, scaling, JPEG encoding and process overheads, not a real encoder's compute (see bench/gpu_suite.py).

Run: ``python bench/bench_index.py [--minutes 30] [--workers 1 2] [--rounds 2] [--questions 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import long_video
from bench_pipeline import OPTIONS, non_mllm
from bench_stage2 import print_run_header, quiet_transformers, tiny_model_dirs
from msjoe.cache import FeatureCache
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.index import index_videos
from msjoe.mllm import GenerationConfig, load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA


@dataclass
class Setup:
    label: str
    store: bool
    two_passes: bool = False
    workers: int = 0
    index_seconds: list[float] = field(default_factory=list)
    disk_mb: tuple[float, float] = (0.0, 0.0)
    question_ms: list[float] = field(default_factory=list)


def index_once(setup: Setup, video: Path, encoder: DualEncoder, root: Path) -> float:
    cache = FeatureCache(root)
    store = FrameStore.for_cache(cache)
    start = time.perf_counter()
    report = index_videos(
        [video], encoder, cache, frame_store=store if setup.store and not setup.two_passes else None,
        workers=setup.workers,
    )  # fmt: skip
    if setup.two_passes:
        store.build(video)
    seconds = time.perf_counter() - start
    assert report.ok and report.indexed == [str(video)], report.summary()
    features_mb = sum(p.stat().st_size for p in root.glob("*/*.safetensors")) / 1e6
    store_mb = sum(p.stat().st_size for p in (root / "frames").rglob("*.safetensors")) / 1e6
    setup.disk_mb = (features_mb, store_mb)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the generated video")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=2, help="indexing rounds per configuration (median)")
    parser.add_argument("--questions", type=int, default=3, help="cached questions timed per configuration (median)")
    parser.add_argument("-k", type=int, default=32, help="frame budget of the questions")
    args = parser.parse_args()

    print_run_header(__file__)
    video = long_video(args.minutes)
    clip_dir, qwen_dir = tiny_model_dirs()
    with quiet_transformers():
        encoder = DualEncoder.from_pretrained(str(clip_dir))
        mllm = load_mllm(str(qwen_dir))
    setups = [
        Setup("features only (before: the default)", store=False),
        *(Setup(f"features only, {n} workers (--no-store-frames)", store=False, workers=n) for n in args.workers),
        Setup("features, then the store: 2 passes (before: --store-frames)", store=True, two_passes=True),
        Setup("features + store, 1 pass (now: the default)", store=True),
        *(Setup(f"features + store, 1 pass, {n} workers (msjoe index)", store=True, workers=n) for n in args.workers),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            shift = round_index % len(setups)
            for position, setup in enumerate(setups[shift:] + setups[:shift]):
                root = Path(scratch) / f"r{round_index}-{position}"
                setup.index_seconds.append(index_once(setup, video, encoder, root))
                print(f"  round {round_index + 1}: {setup.label}: {setup.index_seconds[-1]:.1f} s", flush=True)
                if round_index == args.rounds - 1:
                    config = PipelineConfig(
                        k=args.k,
                        store_frames=setup.store,
                        query_generation=GenerationConfig(max_new_tokens=16),
                        answer_generation=GenerationConfig(max_new_tokens=4),
                    )
                    qa = VideoQA(encoder, mllm, FeatureCache(root), config)
                    for i in range(args.questions):
                        timings = qa.ask(video, f"Question {i}: what is on screen?", OPTIONS).timings
                        setup.question_ms.append(non_mllm(timings) * 1e3)

    base = statistics.median(setups[0].index_seconds)
    print(f"\nvideo: {video.name} ({args.minutes:g} min); K = {args.k}; medians of {args.rounds} rounds\n")
    print("| configuration | index s | vs features only | features MB | store MB | cached question, all but MLLM ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for setup in setups:
        seconds = statistics.median(setup.index_seconds)
        print(
            f"| {setup.label} | {seconds:.1f} | {seconds / base:.2f}x | {setup.disk_mb[0]:.2f} | "
            f"{setup.disk_mb[1]:.1f} | {statistics.median(setup.question_ms):.0f} |"
        )
    store_mb = max(setup.disk_mb[1] for setup in setups)
    print(f"\n(store MB per hour of video: {store_mb * 60 / args.minutes:.0f})")
    print(f"machine after: {__import__('bench_stage2').machine_line()}")


if __name__ == "__main__":
    main()
