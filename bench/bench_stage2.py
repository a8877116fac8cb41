"""Stage-2 step time: a GRPO group generated in one batched call vs one rollout at a time (tiny random models).

One stage-2 step of :class:`msjoe.train.stage2.Stage2Trainer` (G joint rollouts of one item, then the GRPO update of
the MLLM and the REINFORCE update of the U-Sampler) in each configuration, side by side in one run:

- ``generation_batch_size=G`` (each MLLM turn of the group in one left-padded ``generate`` call; the default
  except for the answer turn on a CPU, which this run found slower batched) vs ``generation_batch_size=1`` (one
  rollout at a time), at K = 32 and K = 8. Where the trainer also batches the
  update's scoring (``Stage2Config.scoring_batch_size``, None: a group's turn per forward pass), the one-at-a-time
  configuration sets it to 1 as well, so its update column is the unbatched update;
- with ``--checkpointing``, also the default with ``gradient_checkpointing=True`` at the first K;
- with ``--reuse-encodings``, also one rollout at a time with the chats preprocessed once per step
  (``TransformersMLLM.reusing_encodings``, what ``Stage2Trainer.step`` does) at each K.

The configurations take turns step by step (round robin), so a change of the machine's load hits them alike. Each
cell is the median over ``--steps`` rounds after ``--warmup`` rounds (medians of the phases need not add up to the
median of the total). Phases are exclusive wall times: each wrapped call's time minus the wrapped calls inside it.

**What this measures.** The MLLM is a tiny random Qwen2.5-VL (2 text layers of width 64, a 2-block vision tower)
and the encoder a tiny CLIP, so the numbers are the costs *around* a model — Python, the processor's image
preprocessing, frame decoding, attention over long image-token sequences, padding — not the compute of a 7B
model, which dominates a real step (on a GPU, batching a group also keeps the device busy: the ratios here say
nothing about that). The video is the synthetic benchmark video of ``bench/_longvideo.py`` (640x360, 25 fps,
GOP 250); key frames are decoded from it unless ``--frame-store``.

Rewards: the random model's own rewards tie within most groups (zero advantage: the update skips those turns and
its time would measure almost nothing). By default the rewards of each group are replaced by 0, 1, ..., G-1 before
the update, so every turn gets a gradient as in a learning run; ``--own-rewards`` keeps the model's.

Instrumentation: phases are timed by replacing methods of the trainer and the MLLM (and ``load_frames`` /
``query_similarity`` in ``msjoe.train.stage2_rollout``) with timing wrappers inside this process; nothing in
``src/`` changes.

Run (5-9 minutes on a loaded 2-core CPU)::

    python bench/bench_stage2.py                              # G = 8, K = 32 and 8, 1 warmup + 2 timed rounds
    python bench/bench_stage2.py --checkpointing --steps 3    # also gradient checkpointing at K = 32
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import msjoe.train.stage2_rollout as stage2_module  # the rollout steps look these names up here
from _longvideo import CACHE_DIR, long_video
from msjoe.cache import FeatureCache
from msjoe.data.schema import QAItem
from msjoe.features import DualEncoder
from msjoe.frame_store import DEFAULT_MAX_PIXELS, FrameStore
from msjoe.index import index_video
from msjoe.mllm.base import ImagePart, Message
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.samplers.usampler import USampler
from msjoe.tiny_models.clip import write_tiny_clip
from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl
from msjoe.train.examples import TrainExample
from msjoe.train.stage2 import Rollout, Stage2Config, Stage2Trainer

OPTIONS = ("a red screen", "a green screen", "a blue screen", "a white square")
QUESTION = "What colour is the screen when the square is dark?"


# --------------------------------------------------------------------------------------------------------------
# Shared with bench_stage1.py
# --------------------------------------------------------------------------------------------------------------
def tiny_model_dirs() -> tuple[Path, Path]:
    """Folders of the tiny random CLIP and Qwen2.5-VL under ``bench/.cache/tiny-models`` (written once)."""
    models = CACHE_DIR / "tiny-models"
    clip_dir, qwen_dir = models / "clip", models / "qwen2_5_vl"
    if not (clip_dir / "config.json").exists():
        write_tiny_clip(clip_dir)
    if not (qwen_dir / "config.json").exists():
        write_tiny_qwen2_5_vl(qwen_dir)
    return clip_dir, qwen_dir


def machine_line() -> str:
    """Python, torch, threads, cores and load: what a reader needs to weigh the numbers."""
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
        f"{os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


def print_run_header(script: str) -> None:
    """The lines that identify a run: the command as typed, the machine, the code."""
    print(f"command: {shlex.join(['python', os.path.relpath(script), *sys.argv[1:]])}")
    print(f"machine: {machine_line()}")
    print(f"code: {code_version()}")


def code_version() -> str:
    """The commit benchmarked, and the files of ``src/`` that differ from it (numbers depend on both)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *command], capture_output=True, text=True).stdout
        except OSError:
            return ""

    import msjoe

    package = Path(msjoe.__file__).resolve().parent
    if not package.is_relative_to(repo / "src"):
        return f"msjoe imported from {package} (not this checkout's src/)"
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines() if line.strip()]
    return f"commit {commit}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (src clean)")


class PhaseTimer:
    """Exclusive wall time per ``(stage, phase)``, gathered by wrapping callables in place.

    A wrapped call charges its phase with its own time minus that of the wrapped calls it makes, so the phases of a
    stage partition it (plus whatever nothing wrapped covers). :attr:`stage` is set by the caller (``"rollout"``,
    ``"update"``...). Use as a context manager: attributes replaced on modules and objects are put back on exit.
    """

    def __init__(self) -> None:
        self.stage = ""
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self._children: list[float] = []  # per active wrapped call: time spent in wrapped calls inside it
        self._replaced: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, phase: str | Callable[..., str]) -> None:
        """Time ``owner.name`` as ``phase`` (a label, or a function of the call's arguments returning one)."""
        original = getattr(owner, name)
        timer = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = phase if isinstance(phase, str) else phase(*args, **kwargs)
            timer._children.append(0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = timer._children.pop()
                timer.seconds[timer.stage, label] += elapsed - inner
                if timer._children:
                    timer._children[-1] += elapsed

        self._replaced.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, timed)

    def take(self) -> dict[tuple[str, str], float]:
        """The times gathered since the last call, and a fresh start."""
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken

    def __enter__(self) -> PhaseTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, previous in reversed(self._replaced):
            if previous is _ABSENT:
                delattr(owner, name)  # an instance attribute shadowing its class's method
            else:
                setattr(owner, name, previous)
        self._replaced.clear()


_ABSENT = object()


def median_table(
    columns: list[str], rows: list[tuple[str, list[list[float] | None]]], *, digits: int = 2, bold: Collection[str] = ()
) -> list[str]:
    """Markdown lines: one row per ``(label, samples per column)``, each cell the median of its samples."""
    lines = ["| phase | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, samples in rows:
        cells = []
        for values in samples:
            cells.append("–" if not values else f"{statistics.median(values):.{digits}f}")
        if label in bold:
            cells = [f"**{c}**" for c in cells]
            label = f"**{label}**"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """One configuration: its label, trainer and the per-round measurements."""

    label: str
    k: int
    batched: bool
    checkpointing: bool
    trainer: Stage2Trainer
    reuse_encodings: bool
    rounds: list[dict[tuple[str, str], float]]


LOAD_FRAMES = "load frames (previews + key frames)"
PROCESSOR = "processor (chat template, image preprocessing)"
QUERY_TURN, ANSWER_TURN = "generate: query turn", "generate: answer turn"
FORWARD_NO_GRAD, FORWARD_GRAD = "forward: MLLM scoring, no grad (old / reference)", "forward: MLLM turns (with grad)"
SIMILARITY = "query similarity (text tower)"
SAMPLER_FORWARD = "forward: sampler log-probs"
BACKWARD = "backward (both models)"
OTHER = {"rollout": "other (sampler draws, rewards, Python)", "update": "other (clip, optimiser steps, stats)"}
PHASE_ORDER = (
    LOAD_FRAMES, PROCESSOR, QUERY_TURN, ANSWER_TURN, FORWARD_NO_GRAD, SIMILARITY, FORWARD_GRAD, SAMPLER_FORWARD,
    BACKWARD,
)  # fmt: skip
"""Display order of the phases within a stage (those a stage never ran are left out), then its ``other``."""


def is_answer_turn(k: int) -> Callable[..., str]:
    """Classify a ``complete_batch`` call: answer chats carry K frames, query chats K/2 previews."""

    def classify(chats: list[list[Message]], *args: Any, **kwargs: Any) -> str:
        images = sum(isinstance(part, ImagePart) for message in chats[0] for part in message.content)
        return ANSWER_TURN if images >= k else QUERY_TURN

    return classify


def instrument(timer: PhaseTimer, setup: Setup) -> None:
    """Wrap the calls of one trainer (and its MLLM) whose time the table reports."""
    trainer, mllm = setup.trainer, setup.trainer.mllm
    timer.wrap(mllm, "encode", PROCESSOR)
    timer.wrap(mllm, "encode_batch", PROCESSOR)
    timer.wrap(mllm, "complete_batch", is_answer_turn(setup.k))
    for scoring in ("token_logprobs", "token_logprobs_batch"):  # whichever the trainer calls (nested: exclusive)
        if hasattr(mllm, scoring):
            timer.wrap(mllm, scoring, lambda *a, **kw: FORWARD_GRAD if torch.is_grad_enabled() else FORWARD_NO_GRAD)
    timer.wrap(trainer, "_backward", BACKWARD)
    timer.wrap(trainer, "sampler_backward", SAMPLER_FORWARD)


def run_round(
    setup: Setup, example: TrainExample, timer: PhaseTimer, own_rewards: bool
) -> dict[tuple[str, str], float]:
    """One step of ``setup``'s trainer; its exclusive phase times plus the totals and token counts."""
    trainer = setup.trainer
    timer.take()
    timer.stage = "rollout"
    with trainer.mllm.reusing_encodings() if setup.reuse_encodings else nullcontext():
        start = time.perf_counter()
        groups = trainer.rollout([example])
        rollout_seconds = time.perf_counter() - start
        if not own_rewards:
            groups = [spread_rewards(group) for group in groups]
        timer.stage = "update"
        stats = trainer.update(groups, rollout_seconds=rollout_seconds)
    phases = timer.take()
    for stage, total in (("rollout", stats.rollout_seconds), ("update", stats.update_seconds)):
        phases[stage, OTHER[stage]] = total - sum(v for (s, _), v in phases.items() if s == stage)
        phases[stage, "total"] = total
    phases["step", "total"] = stats.seconds
    phases["tokens", "query"] = stats.query_tokens
    phases["tokens", "answer"] = stats.answer_tokens
    phases["tokens", "turns with a gradient"] = 2 * sum(a != 0 for a in trainer.mllm_advantages(groups))
    return phases


def spread_rewards(group: list[Rollout]) -> list[Rollout]:
    """Rewards 0, 1, ..., G-1: every rollout gets a non-zero GRPO advantage (for an even G)."""
    return [replace(rollout, reward=float(index)) for index, rollout in enumerate(group)]


def build_setups(
    args: argparse.Namespace, qwen_dir: Path, encoder: DualEncoder, store: FrameStore | None
) -> list[Setup]:
    variants = []  # (K, batched, checkpointing, reuse encodings)
    for k in args.k:
        variants += [(k, True, False, False), (k, False, False, False)]
        if args.reuse_encodings:
            variants.append((k, False, False, True))
    if args.checkpointing:
        variants.append((args.k[0], True, True, False))
    # Trainers that batch the update's scoring too: "one at a time" then means both phases.
    one_at_a_time = {"generation_batch_size": 1}
    if "scoring_batch_size" in {f.name for f in fields(Stage2Config)}:
        one_at_a_time["scoring_batch_size"] = 1
    setups = []
    for k, batched, checkpointing, reuse in variants:
        config = Stage2Config(
            **({"generation_batch_size": args.group_size} if batched else one_at_a_time),
            k=k,
            group_size=args.group_size,
            gradient_checkpointing=checkpointing,
            query_max_new_tokens=args.query_tokens,
            answer_max_new_tokens=args.answer_tokens,
            frame_max_pixels=args.frame_max_pixels,
            warmup_steps=0,
            seed=0,
        )
        mllm = TransformersMLLM(str(qwen_dir), dtype="float32")  # each trainer adds its own LoRA adapters in place
        trainer = Stage2Trainer(mllm, USampler(seed=0), encoder, config, frame_store=store)
        label = f"K={k} " + ("group batched" if batched else "one at a time")
        label += (" + ckpt" if checkpointing else "") + (" + reused encodings" if reuse else "")
        setups.append(Setup(label, k, batched, checkpointing, trainer, reuse, []))
    return setups


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence weight-loading progress bars while the models load (they would break up the report)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the synthetic video")
    parser.add_argument("-k", type=int, nargs="+", default=[32, 8], help="frame budgets K")
    parser.add_argument("--group-size", type=int, default=8, help="G: rollouts per item")
    parser.add_argument("--steps", type=int, default=2, help="timed rounds (one step of every configuration each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--query-tokens", type=int, default=128, help="query_max_new_tokens (the random model uses all)"
    )
    parser.add_argument("--answer-tokens", type=int, default=32, help="answer_max_new_tokens")
    parser.add_argument("--frame-max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget of a key frame")
    parser.add_argument("--checkpointing", action="store_true", help="add gradient checkpointing at the first K")
    parser.add_argument(
        "--reuse-encodings", action="store_true", help="add one-at-a-time with chats preprocessed once per step"
    )
    parser.add_argument("--frame-store", action="store_true", help="read frames from the frame store (built once)")
    parser.add_argument("--own-rewards", action="store_true", help="keep the random model's (mostly tied) rewards")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print_run_header(__file__)
    started = time.perf_counter()
    video = long_video(args.minutes)
    clip_dir, qwen_dir = tiny_model_dirs()
    cache = FeatureCache(CACHE_DIR / "features")
    store = FrameStore.for_cache(cache, max_pixels=args.frame_max_pixels) if args.frame_store else None
    with quiet_transformers():
        encoder = DualEncoder.from_pretrained(str(clip_dir))
        features = index_video(video, encoder, cache, frame_store=store)
        qa = QAItem(id="bench-stage2", video=str(video), question=QUESTION, options=OPTIONS, answer="A")
        example = TrainExample(qa=qa, features=features)
        setups = build_setups(args, qwen_dir, encoder, store)
    print(f"video: {video.name}, T = {features.num_frames} candidates; set-up {time.perf_counter() - started:.0f} s")

    with PhaseTimer() as timer:
        timer.wrap(stage2_module, "load_frames", LOAD_FRAMES)
        timer.wrap(stage2_module, "query_similarity", SIMILARITY)
        for setup in setups:
            instrument(timer, setup)
        for round_index in range(args.warmup + args.steps):
            # Rotate who goes first, so no configuration always runs right after the same other one.
            shift = round_index % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                phases = run_round(setup, example, timer, args.own_rewards)
                if round_index >= args.warmup:
                    setup.rounds.append(phases)
                kind = "warmup" if round_index < args.warmup else "timed"
                print(
                    f"  round {round_index + 1} ({kind}) {setup.label}: rollout {phases['rollout', 'total']:.1f} s, "
                    f"update {phases['update', 'total']:.1f} s",
                    flush=True,
                )

    report(args, setups, features.num_frames, time.perf_counter() - started)


def report(args: argparse.Namespace, setups: list[Setup], num_candidates: int, seconds: float) -> None:
    def samples(stage: str, label: str) -> list[list[float] | None]:
        return [[r[stage, label] for r in s.rounds if (stage, label) in r] or None for s in setups]

    seen = {key for setup in setups for phases in setup.rounds for key in phases}
    rows: list[tuple[str, list[list[float] | None]]] = []
    for stage in ("rollout", "update"):
        labels = [label for label in PHASE_ORDER if (stage, label) in seen] + [OTHER[stage]]
        rows += [(f"{stage}: {label}", samples(stage, label)) for label in labels]
        rows.append((stage, samples(stage, "total")))
    rows.append(("step", samples("step", "total")))
    source = "frame store" if args.frame_store else "decoded from the video"
    print(
        f"\nStage-2 step, seconds (median of {args.steps} after {args.warmup} warmup; G = {args.group_size}, "
        f"one item, T = {num_candidates}, frames {source}, query/answer budget "
        f"{args.query_tokens}/{args.answer_tokens} tokens; tiny random models: overheads, not 7B compute)\n"
    )
    for line in median_table([s.label for s in setups], rows, bold={"rollout", "update", "step"}):
        print(line)
    for key, name in (
        ("query", "query tokens per rollout (mean)"),
        ("answer", "answer tokens per rollout (mean)"),
        ("turns with a gradient", "MLLM turns with a gradient (2 per rollout with A ≠ 0)"),
    ):
        print(
            f"| {name} | "
            + " | ".join(f"{statistics.mean(r['tokens', key] for r in s.rounds):.1f}" for s in setups)
            + " |"
        )

    def median(setup: Setup, stage: str, label: str) -> float:
        return statistics.median(r[stage, label] for r in setup.rounds)

    print("\nOne rollout at a time ÷ group batched (> 1: batching the group is faster)\n")
    print("| K | generate: query turn | generate: answer turn | rollout | update (scoring) | step |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in args.k:
        batched = next(s for s in setups if s.k == k and s.batched and not s.checkpointing)
        single = next(s for s in setups if s.k == k and not s.batched and not s.reuse_encodings)
        cells = [
            median(single, stage, label) / median(batched, stage, label)
            for stage, label in (
                ("rollout", QUERY_TURN),
                ("rollout", ANSWER_TURN),
                ("rollout", "total"),
                ("update", "total"),
                ("step", "total"),
            )
        ]
        print(f"| {k} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    checkpointed = [s for s in setups if s.checkpointing]
    if checkpointed:
        on = checkpointed[0]
        off = next(s for s in setups if s.k == on.k and s.batched and not s.checkpointing)
        ratio = median(on, "update", "total") / median(off, "update", "total")
        print(f"\nGradient checkpointing on ÷ off, update at K={on.k}: {ratio:.2f}x")
    for reused in (s for s in setups if s.reuse_encodings):
        plain = next(s for s in setups if s.k == reused.k and not s.batched and not s.reuse_encodings)
        cells = [median(plain, stage, "total") / median(reused, stage, "total") for stage in ("update", "step")]
        print(f"\nReused encodings, K={reused.k}: update {cells[0]:.2f}x faster, step {cells[1]:.2f}x faster")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nmachine after: {machine_line()}; whole run {seconds / 60:.1f} min, peak resident memory {peak_gb:.1f} GB")


if __name__ == "__main__":
    main()
