"""Stage-1 step time: answer cache cold vs warm, frames decoded vs read from the frame store (tiny random models).

Steps of :class:`msjoe.train.stage1.Stage1Trainer` with the frozen MLLM as answerer
(:class:`msjoe.train.answerer.MLLMAnswerer`) over examples from :func:`msjoe.train.data.prepare_examples` (the
question as the single query), side by side in one run:

- **cold cache, frames decoded**: a fresh answer cache, every draw asked; key frames decoded from the video;
- **cold cache, frame store**: the same, key frames read from :class:`msjoe.frame_store.FrameStore` (JPEGs stored
  at indexing; built once, its build time is printed);
- **warm cache (replay)**: the first configuration run again with the same seed and initial sampler, over the same
  batches, its answer cache loaded from the first run's file: the sampler draws the same frames, so every answer
  is a cache hit. This is the bound for a sampler that keeps drawing frame sets it drew before.

The two cold configurations take turns step by step (round robin), so a change of the machine's load hits them
alike; the replay runs after them (it needs the whole cache file). Cells are medians over the steps after
``--warmup`` (all steps are replayed). Phases are exclusive wall times, timed by replacing functions of
``msjoe.train.answerer`` and methods of the MLLM and answerers with timing wrappers inside this process.

A second table times the U-Sampler's side of a step alone, with an answerer that answers instantly: the default
2M-parameter network, 8 items at T = 3600 (an hour at 1 fps), forward + backward, and a whole ``Stage1Trainer.step``
at the ``Stage1Config`` defaults (8 items x 8 draws of K = 16), to set against the cost of the answers.

**What this measures.** The MLLM is a tiny random Qwen2.5-VL (2 text layers of width 64) and the encoder a tiny
CLIP: the answer times are overheads — Python, image preprocessing, frame decoding — plus a tiny model's forward,
not a 7B model's compute (which makes the cache and the sampler's share matter even more: a cache hit saves a whole
7B forward, the sampler's cost does not grow with the MLLM). The video is the synthetic benchmark video of
``bench/_longvideo.py`` (640x360, 25 fps, GOP 250); its QA items are made up (the random model's answers mean
nothing, only their cost is measured).

Run (about 2 minutes on a loaded 2-core CPU)::

    python bench/bench_stage1.py        # 10-minute video, 2 items x 4 draws of K = 16 per step, 1 + 5 steps
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import msjoe.train.answerer as answerer_module
from _longvideo import CACHE_DIR, long_video
from bench_stage2 import PhaseTimer, machine_line, median_table, print_run_header, quiet_transformers, tiny_model_dirs
from msjoe.cache import FeatureCache
from msjoe.data.schema import QAItem
from msjoe.features import DualEncoder
from msjoe.frame_store import DEFAULT_MAX_PIXELS, FrameStore
from msjoe.mllm import GenerationConfig
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.samplers.usampler import USampler
from msjoe.train.answerer import MLLMAnswerer
from msjoe.train.data import prepare_examples
from msjoe.train.examples import TrainExample
from msjoe.train.stage1 import Stage1Config, Stage1Trainer

OPTIONS = ("a red screen", "a green screen", "a blue screen", "a white square")
QUESTIONS = (
    "What colour is the screen when the square is dark?",
    "What appears on screen after the first flash?",
    "What colour is the background at the end?",
    "What is shown while the barcode changes?",
)
PHASES = (
    "load frames",
    "processor (chat template, image preprocessing)",
    "MLLM generate (prefill + decode), parse",
    "answer cache, fingerprint, Python",
    "sampler: forward, draws, log-probs, backward, AdamW",
)
COLD_DECODED, COLD_STORE, WARM = "cold cache, frames decoded", "cold cache, frame store", "warm cache (replay)"


@dataclass
class Run:
    """One configuration: its trainer and answerer, and the measurements of each step."""

    label: str
    trainer: Stage1Trainer
    answerer: MLLMAnswerer
    steps: list[dict[str, float]]


def make_run(label: str, answerer: MLLMAnswerer, config: Stage1Config, timer: PhaseTimer) -> Run:
    """A trainer over a fresh default U-Sampler (seed 0: every configuration starts from the same weights)."""
    timer.wrap(answerer, "answer_correct", "answer cache, fingerprint, Python")
    return Run(label, Stage1Trainer(USampler(seed=0), answerer, config), answerer, [])


def timed_step(run: Run, batch: list[TrainExample], timer: PhaseTimer) -> dict[str, float]:
    """One optimiser step; its exclusive phase times, the sampler's rest, model calls and cache hits."""
    calls, hits = run.answerer.stats.model_calls, run.answerer.stats.cache_hits
    timer.take()
    stats = run.trainer.step(batch)
    phases = {label: seconds for (_, label), seconds in timer.take().items()}
    phases[PHASES[-1]] = stats.seconds - sum(phases.values())
    phases["step"] = stats.seconds
    phases["model calls"] = run.answerer.stats.model_calls - calls
    phases["cache hits"] = run.answerer.stats.cache_hits - hits
    return phases


def batches(examples: list[TrainExample], batch_size: int, steps: int) -> list[list[TrainExample]]:
    """The same batches for every configuration (a replay needs them), cycling through the examples."""
    return [[examples[(s * batch_size + j) % len(examples)] for j in range(batch_size)] for s in range(steps)]


# --------------------------------------------------------------------------------------------------------------
# The U-Sampler alone
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SimItem:
    """A stage-1 item without a video: a similarity matrix and a difficulty."""

    sim: torch.Tensor
    difficulty: float = 0.5


class InstantAnswerer:
    """Answers at once (correct when the first chosen index is even), so a step times the sampler's side only."""

    def answer_correct(self, item: SimItem, chosen_indices: torch.Tensor) -> bool:
        return int(chosen_indices[0]) % 2 == 0


def clip_like_similarities(items: int, queries: int, frames: int, seed: int = 0) -> list[torch.Tensor]:
    """Cosines around 0.2 with noise: the shapes and value range of CLIP similarities (the values do not matter)."""
    generator = torch.Generator().manual_seed(seed)
    return [0.2 + 0.02 * torch.randn(queries, frames, generator=generator) for _ in range(items)]


def sampler_alone(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(case, median ms, p90 ms) of the U-Sampler's side of a stage-1 step at T = ``args.sampler_frames``."""
    sims = clip_like_similarities(8, 4, args.sampler_frames)
    sampler = USampler(seed=0)
    generator = torch.Generator().manual_seed(0)
    defaults = Stage1Config()

    def forward_backward() -> None:
        sampler.module.zero_grad(set_to_none=True)
        logits = sampler.logits_batch(sims)
        orders = [sampler.draw(row.detach(), defaults.k, generator=generator) for row in logits]
        loss = -torch.stack([sampler.sequence_log_prob(row, order) for row, order in zip(logits, orders, strict=True)])
        loss.sum().backward()

    trainer = Stage1Trainer(USampler(seed=0), InstantAnswerer(), Stage1Config(warmup_steps=0, log_interval=0))
    items = [SimItem(sim) for sim in sims]
    cases = [
        (f"forward + backward, 8 items (one draw of K={defaults.k} each)", forward_backward),
        (
            f"Stage1Trainer.step, instant answers ({defaults.batch_size} items x {defaults.samples_per_item} draws "
            f"of K={defaults.k}, AdamW)",
            lambda: trainer.step(items),
        ),
    ]
    rows = []
    for label, case in cases:
        for _ in range(args.sampler_warmup):
            case()
        samples = []
        for _ in range(args.sampler_runs):
            start = time.perf_counter()
            case()
            samples.append((time.perf_counter() - start) * 1e3)
        samples.sort()
        rows.append((label, statistics.median(samples), samples[min(len(samples) - 1, int(0.9 * len(samples)))]))
    return rows


# --------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic video")
    parser.add_argument("-k", type=int, default=16, help="frames per draw (Stage1Config default 16)")
    parser.add_argument("--items", type=int, default=2, help="QA items on the video (at most 4)")
    parser.add_argument("--batch-size", type=int, default=2, help="items per step (Stage1Config default 8)")
    parser.add_argument("--samples", type=int, default=4, help="draws per item (Stage1Config default 8)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--answer-tokens", type=int, default=32, help="answer max_new_tokens (greedy)")
    parser.add_argument("--frame-max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget of a key frame")
    parser.add_argument("--sampler-frames", type=int, default=3600, help="T of the U-Sampler-alone table")
    parser.add_argument("--sampler-runs", type=int, default=10, help="timed runs of each U-Sampler-alone case")
    parser.add_argument("--sampler-warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if not 1 <= args.items <= len(QUESTIONS):
        parser.error(f"--items must be 1 to {len(QUESTIONS)}")
    torch.set_num_threads(args.threads)

    print_run_header(__file__)
    started = time.perf_counter()
    video = long_video(args.minutes)
    clip_dir, qwen_dir = tiny_model_dirs()
    cache = FeatureCache(CACHE_DIR / "features")
    store = FrameStore.for_cache(cache, max_pixels=args.frame_max_pixels)
    items = [
        QAItem(id=f"bench-stage1-{i}", video=str(video), question=q, options=OPTIONS, answer="A", difficulty=0.5)
        for i, q in enumerate(QUESTIONS[: args.items])
    ]
    with quiet_transformers():
        encoder = DualEncoder.from_pretrained(str(clip_dir))
        mllm = TransformersMLLM(str(qwen_dir), dtype="float32")
    stored_before = store.has(video)
    prepare_started = time.perf_counter()
    prepared = prepare_examples(
        items, encoder=encoder, cache=cache, queries="question", frame_store=store, require_difficulty=True,
        min_frames=args.k,
    )  # fmt: skip
    prepare_seconds = time.perf_counter() - prepare_started
    examples = prepared.examples
    num_candidates = examples[0].features.num_frames
    store_note = "found in the cache" if stored_before else f"built now (indexing took {prepare_seconds:.1f} s)"
    print(f"video: {video.name}, T = {num_candidates} candidates; frame store entry {store_note}")

    config = Stage1Config(
        k=args.k, batch_size=args.batch_size, samples_per_item=args.samples, warmup_steps=0, log_interval=0, seed=0
    )
    generation = GenerationConfig(max_new_tokens=args.answer_tokens)
    schedule = batches(examples, args.batch_size, args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as folder, PhaseTimer() as timer:
        timer.wrap(answerer_module, "load_candidate_frames", "load frames")
        timer.wrap(answerer_module, "answer_question", "MLLM generate (prefill + decode), parse")
        timer.wrap(mllm, "encode", "processor (chat template, image preprocessing)")
        cold_cache = Path(folder) / "cold_decoded.jsonl"

        def answerer(frame_store: FrameStore | None, cache_path: Path) -> MLLMAnswerer:
            return MLLMAnswerer(
                mllm,
                frame_max_pixels=args.frame_max_pixels,
                frame_store=frame_store,
                cache_path=cache_path,
                generation=generation,
            )

        cold = [
            make_run(COLD_DECODED, answerer(None, cold_cache), config, timer),
            make_run(COLD_STORE, answerer(store, Path(folder) / "cold_store.jsonl"), config, timer),
        ]
        for number, batch in enumerate(schedule):
            for run in cold:
                run.steps.append(timed_step(run, batch, timer))
                print(f"  step {number + 1} {run.label}: {run.steps[-1]['step']:.1f} s", flush=True)
        warm = make_run(WARM, answerer(None, cold_cache), config, timer)
        for number, batch in enumerate(schedule):
            warm.steps.append(timed_step(warm, batch, timer))
            print(f"  step {number + 1} {warm.label}: {warm.steps[-1]['step']:.2f} s", flush=True)
    runs = [*cold, warm]

    alone = sampler_alone(args)
    report(args, runs, alone, num_candidates, time.perf_counter() - started)


def report(
    args: argparse.Namespace,
    runs: list[Run],
    alone: list[tuple[str, float, float]],
    num_candidates: int,
    seconds: float,
) -> None:
    timed = {run.label: run.steps[args.warmup :] for run in runs}

    def samples(key: str) -> list[list[float] | None]:
        return [[step.get(key, 0.0) for step in timed[run.label]] for run in runs]

    answers = args.batch_size * args.samples
    print(
        f"\nStage-1 step, seconds (median of {args.steps} after {args.warmup} warmup; {args.batch_size} items x "
        f"{args.samples} draws = {answers} answers per step, K = {args.k}, T = {num_candidates}; default 2M "
        f"U-Sampler; tiny random MLLM: overheads, not 7B compute)\n"
    )
    rows = [(label, samples(label)) for label in PHASES] + [("step", samples("step"))]
    for line in median_table([run.label for run in runs], rows, digits=3, bold={"step"}):
        print(line)

    def row(name: str, cell: Callable[[list[dict[str, float]]], str]) -> None:
        print(f"| {name} | " + " | ".join(cell(timed[run.label]) for run in runs) + " |")

    row("model calls per step", lambda steps: f"{statistics.mean(s['model calls'] for s in steps):.1f}")
    row("cache hits per step", lambda steps: f"{statistics.mean(s['cache hits'] for s in steps):.1f}")
    row("step ms per draw", lambda steps: f"{1e3 * statistics.median(s['step'] for s in steps) / answers:.0f}")

    def median_step(label: str) -> float:
        return statistics.median(step["step"] for step in timed[label])

    print("\nRatios of step times\n")
    print("| comparison | ratio |")
    print("|---|---:|")
    print(f"| frames decoded ÷ frame store (cold cache) | {median_step(COLD_DECODED) / median_step(COLD_STORE):.2f}x |")
    print(f"| cold ÷ warm cache (frames decoded) | {median_step(COLD_DECODED) / median_step(WARM):.1f}x |")
    print(f"| cold (frame store) ÷ warm cache | {median_step(COLD_STORE) / median_step(WARM):.1f}x |")

    defaults = Stage1Config()
    default_answers = defaults.batch_size * defaults.samples_per_item
    per_answer_ms = 1e3 * min(median_step(COLD_DECODED), median_step(COLD_STORE)) / answers
    print(
        f"\nU-Sampler alone (default network, {sum(p.numel() for p in USampler(seed=0).module.parameters()):,} "
        f"parameters; T = {args.sampler_frames}, 4 queries; {args.sampler_runs} runs after {args.sampler_warmup})\n"
    )
    print("| case | median ms | p90 ms |")
    print("|---|---:|---:|")
    for label, median, p90 in alone:
        print(f"| {label} | {median:.1f} | {p90:.1f} |")
    step_ms = alone[-1][1]
    answering_ms = default_answers * per_answer_ms
    print(
        f"\nA default stage-1 step asks {default_answers} answers: at the fastest cold cost above "
        f"({per_answer_ms:.0f} ms an answer, tiny model) that is {answering_ms / 1e3:.1f} s of answering against "
        f"{step_ms:.0f} ms for the sampler's side ({step_ms / answering_ms:.1%})."
    )
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nmachine after: {machine_line()}; whole run {seconds / 60:.1f} min, peak resident memory {peak_gb:.1f} GB")


if __name__ == "__main__":
    main()
