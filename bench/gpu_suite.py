"""msjoe at the real models' sizes on one GPU: Qwen2.5-VL-7B-Instruct and CLIP ViT-L/14 with RANDOM weights.

The models are built from their published configs (``bench/configs/``, sources in ``bench/configs/README.md``), so
compute and memory are those of the real checkpoints; no weights are downloaded. Random weights never emit an end
token, so every generation runs to its token budget: times are those of the longest replies. Tokenizers are the
smoke-test ones (same special tokens; the configs' token ids are set to theirs, the vocabulary size is kept).

Sections (each timed with CUDA synchronisation; median, p90, peak GPU memory; a failing section is recorded with
its traceback and the suite goes on):

- ``index``: a generated video (``--video-minutes``, 640x360 H.264, 25 fps, GOP 10 s): decoding alone on
  ``--workers`` processes (encoder size + the frame store's JPEGs), encoding alone (CLIP in ``--dtype``, batches of
  64), and ``index_videos`` end to end in this process and with the workers; video hours indexed per hour;
- ``ask``: ``VideoQA.ask`` on the indexed video (cached features, frames from the store) at each ``--ks``: every
  stage's time and the prefill tokens of both MLLM turns;
- ``answering``: stage-1 answering, ``--answer-batch`` answer turns of K = ``--stage2-k`` frames, one ``complete``
  at a time against one ``complete_batch``, and the gold-letter probability (one forward pass each, one at a time
  and batched): answers per second;
- ``usampler``: ``get_sampler("usampler")`` forward + select on the device, T = 3600 and 10,000, and a training
  forward + sample + backward;
- ``stage2``: one stage-2 step (G = ``--group-size``, K = ``--stage2-k``): LoRA, then full fine-tuning, each with
  gradient checkpointing off and on (an out-of-memory is recorded as "does not fit"); the rollout is generated
  once (with LoRA) and every configuration updates from it (one PPO epoch: its ratio is 1 whatever policy made it).

It writes ``results.json`` (after every section, atomically) and ``results.md`` into ``--out``. On the H200 the
defaults are sized to finish in about 4-6 minutes (``--budget-s`` skips the sections left once it is spent); the
exact command, with PyAV carried as a wheel, is in bench/RESULTS.md. ``--tiny`` runs the same code with the
smoke-test models on a CPU (smaller defaults; a test runs it with smaller sizes still)::

    python bench/gpu_suite.py --out /tmp/gpu-suite                       # on the GPU machine
    python bench/gpu_suite.py --tiny --out /tmp/gpu-suite-tiny           # anywhere, ~1-2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _longvideo import long_video
from bench_stage2 import quiet_transformers
from msjoe import decode_worker
from msjoe.atomic import write_bytes_atomically
from msjoe.cache import FeatureCache
from msjoe.data.schema import QAItem
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.index import index_videos, worker_segments
from msjoe.mllm import MLLM, GenerationConfig, Message
from msjoe.mllm.prompts import answer_prompt
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.pipeline import PipelineConfig, VideoQA, load_frames
from msjoe.samplers import get_sampler
from msjoe.train.answerer import DEFAULT_ANSWER_GENERATION
from msjoe.train.examples import TrainExample
from msjoe.train.stage2 import Rollout, Stage2Config, Stage2Trainer
from msjoe.video import candidate_timestamps, iter_frames, probe

CONFIGS = Path(__file__).resolve().parent / "configs"
SECTIONS = ("index", "ask", "answering", "usampler", "stage2")
"""In running order: the cheap U-Sampler section before stage 2, the longest."""
OPTIONS = ("a red screen", "a green screen", "a blue screen", "a white square")


# --------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """Peak GPU memory allocated inside the block, in GiB (``None`` on a CPU), stored as ``into["peak_gpu_gib"]``."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            synchronize(device)
            into["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        else:
            into["peak_gpu_gib"] = None


def timed(function: Callable[[], Any], repeats: int, device: torch.device) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls (the device synchronised around each) and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds, result


def summary(seconds: list[float], **extra: Any) -> dict[str, Any]:
    """Median and p90 (nearest rank) of ``seconds``, with the samples and any extra fields."""
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_s": statistics.median(ordered), "p90_s": p90, "samples_s": seconds, **extra}


@dataclass
class Suite:
    """What the sections share: settings, models, the video and its index."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    encoder: DualEncoder
    mllm: TransformersMLLM
    work: Path
    deadline: float = math.inf
    """``time.perf_counter()`` after which the sections skip what is left (``--budget-s`` from the start)."""
    video: Path | None = None
    cache: FeatureCache | None = None
    store: FrameStore | None = None
    features: Any = None
    notes: list[str] = field(default_factory=list)

    def indexed(self) -> Any:
        """The video's features, indexed (with its frame store) if no section did yet."""
        if self.features is None:
            self.video = self.video or make_video(self)
            self.cache = FeatureCache(self.work / "cache")
            self.store = FrameStore.for_cache(self.cache)
            index_videos([self.video], self.encoder, self.cache, frame_store=self.store, workers=self.args.workers)
            self.features = self._load_features()
        return self.features

    def _load_features(self) -> Any:
        from msjoe.index import index_video

        return index_video(self.video, self.encoder, self.cache, frame_store=self.store)


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------
def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, work: Path) -> tuple:
    """The dual encoder and the MLLM: real sizes with random weights, or the smoke-test models (``--tiny``)."""
    if args.tiny:
        from msjoe.tiny_models.clip import write_tiny_clip
        from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl

        clip_dir, qwen_dir = write_tiny_clip(work / "clip"), write_tiny_qwen2_5_vl(work / "qwen")
        encoder = DualEncoder.from_pretrained(str(clip_dir), device=device, dtype=dtype)
        mllm = TransformersMLLM(str(qwen_dir), device=str(device), dtype=str(dtype).removeprefix("torch."))
        return encoder, mllm
    return real_size_clip(device, dtype), real_size_qwen(device, dtype, args.attn_implementation)


def _config(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.config.json").read_text())


def _preprocessor(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.preprocessor_config.json").read_text())


def real_size_clip(device: torch.device, dtype: torch.dtype) -> DualEncoder:
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14), random weights, its image processor, a smoke-test tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from msjoe.tiny_models.clip import train_clip_tokenizer

    tokenizer = train_clip_tokenizer()
    config = _config("clip_vit_large_patch14")
    ids = tokenizer.convert_tokens_to_ids
    # The smoke tokenizer's ids (< 49408: the embedding keeps its size); eos != 2 keeps CLIP's EOS-token pooling.
    config["text_config"].update(bos_token_id=ids("<|startoftext|>"), eos_token_id=ids("<|endoftext|>"))
    config["text_config"]["pad_token_id"] = ids("<|endoftext|>")
    pre = _preprocessor("clip_vit_large_patch14")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": pre["size"]},
        crop_size={"height": pre["crop_size"], "width": pre["crop_size"]},
        image_mean=pre["image_mean"],
        image_std=pre["image_std"],
        resample=pre["resample"],
    )
    with torch.device(device):
        model = CLIPModel._from_config(CLIPConfig.from_dict(config), dtype=dtype)
    model.requires_grad_(False).eval()
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return DualEncoder(model, processor, model_id="random:openai/clip-vit-large-patch14", revision="random")


def real_size_qwen(device: torch.device, dtype: torch.dtype, attn_implementation: str) -> TransformersMLLM:
    """Qwen2.5-VL-7B-Instruct, random weights, its image processor, a smoke-test tokenizer and chat template."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from msjoe.tiny_models.qwen import CHAT_TEMPLATE, END_OF_TEXT, train_qwen_tokenizer

    tokenizer = train_qwen_tokenizer(400)
    ids = tokenizer.convert_tokens_to_ids
    config = _config("qwen2_5_vl_7b_instruct")
    config.update(
        bos_token_id=ids(END_OF_TEXT),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids(END_OF_TEXT),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|vision_start|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
    )
    qwen_config = Qwen2_5_VLConfig.from_dict(config)
    pre = _preprocessor("qwen2_5_vl_7b_instruct")
    image_processor = Qwen2VLImageProcessor(
        min_pixels=pre["min_pixels"],
        max_pixels=pre["max_pixels"],
        patch_size=pre["patch_size"],
        temporal_patch_size=pre["temporal_patch_size"],
        merge_size=pre["merge_size"],
        image_mean=pre["image_mean"],
        image_std=pre["image_std"],
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    with torch.device(device):  # the weights are initialised where they live, in their dtype
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            qwen_config, dtype=dtype, attn_implementation=attn_implementation
        )
    model.generation_config.eos_token_id = qwen_config.text_config.eos_token_id
    model.generation_config.pad_token_id = qwen_config.text_config.pad_token_id
    return TransformersMLLM.from_model(model, processor, model_id="random:Qwen/Qwen2.5-VL-7B-Instruct")


class CountingMLLM(MLLM):
    """Delegates to a :class:`TransformersMLLM` and keeps each turn's prefill and generated token counts."""

    name = "counting"

    def __init__(self, inner: TransformersMLLM) -> None:
        self.inner = inner
        self.turns: list[tuple[int, int]] = []

    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        completion = self.inner.complete(messages, generation)
        self.turns.append((completion.prompt_tokens, len(completion.token_ids)))
        return completion.text


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------
def make_video(suite: Suite) -> Path:
    args = suite.args
    folder = Path(args.video_dir) if args.video_dir else suite.work / "video"
    start = time.perf_counter()
    path = long_video(args.video_minutes, parts=args.video_parts, folder=folder, verbose=False)
    suite.notes.append(f"video: {path.name}, generated in {time.perf_counter() - start:.0f} s")
    return path


def section_index(suite: Suite) -> dict[str, Any]:
    args, device = suite.args, suite.device
    suite.video = suite.video or make_video(suite)
    info = probe(suite.video)
    timestamps = candidate_timestamps(info, fps=1.0, max_frames=4096)
    frames = len(timestamps)
    hours = info.duration / 3600
    out: dict[str, Any] = {"video_seconds": info.duration, "candidates": frames, "workers": args.workers}
    store = FrameStore(suite.work / "decode-only")

    # Decoding alone: the workers' segments (encoder size + JPEGs at the store's size), nothing encoded.
    segments = worker_segments(
        suite.video, suite.encoder, workers=args.workers, fps=1.0, max_frames=4096, frame_store=store
    )

    def decode_only() -> int:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool, decode_worker.without_main_module():
            counts = list(pool.map(decode_worker.count_frames, segments))
        return sum(counts)

    seconds, decoded = timed(decode_only, 1, device)
    assert decoded == frames, (decoded, frames)
    out["decode only, workers"] = summary(seconds, frames_per_s=frames / seconds[0])
    record: dict[str, Any] = {}

    # Encoding alone: one real batch of decoded frames, encoded as many times as the video has batches.
    batch = next(iter_frames(suite.video, timestamps[:64], suite.encoder.frame_size))
    batches = math.ceil(frames / len(batch))
    suite.encoder.encode_images(batch)  # warm-up (kernels, device preprocessing check)
    with peak_memory(device, record):
        seconds, _ = timed(lambda: [suite.encoder.encode_images(batch) for _ in range(batches)], 1, device)
    out["encode only"] = summary(seconds, frames_per_s=batches * len(batch) / seconds[0], **record)

    # End to end, in this process and with the workers; each into an empty cache.
    for label, workers in (("index, in this process", 0), ("index, workers", args.workers)):
        cache = FeatureCache(suite.work / f"index-{workers}")
        record = {}
        with peak_memory(device, record):
            seconds, report = timed(
                lambda cache=cache, workers=workers: index_videos(
                    [suite.video], suite.encoder, cache, frame_store=FrameStore.for_cache(cache), workers=workers
                ),
                1,
                device,
            )
        assert report.ok, report.summary()
        out[label] = summary(
            seconds, frames_per_s=frames / seconds[0], video_hours_per_hour=hours / (seconds[0] / 3600), **record
        )
        suite.cache, suite.store = cache, FrameStore.for_cache(cache)
    suite.features = suite._load_features()
    return out


def section_ask(suite: Suite) -> dict[str, Any]:
    args, device = suite.args, suite.device
    suite.indexed()
    counting = CountingMLLM(suite.mllm)
    out: dict[str, Any] = {}
    for k in args.ks:
        if time.perf_counter() > suite.deadline:
            out[f"K={k}"] = {"skipped": "time budget spent"}
            continue
        config = PipelineConfig(
            k=k,
            sampler="bolt",
            query_generation=GenerationConfig(max_new_tokens=args.query_tokens),
            answer_generation=GenerationConfig(max_new_tokens=args.answer_tokens),
        )
        qa = VideoQA(suite.encoder, counting, suite.cache, config)
        qa.ask(suite.video, "Warm-up: what is on screen?", list(OPTIONS))
        answers, record = [], {}
        counting.turns.clear()
        with peak_memory(device, record):
            for i in range(args.repeats):
                synchronize(device)
                answers.append(qa.ask(suite.video, f"Question {i}: what colour is the screen?", list(OPTIONS)))
        stages = {stage: summary([a.timings[stage] for a in answers]) for stage in answers[0].timings}
        totals = [sum(a.timings.values()) for a in answers]
        non_mllm = [sum(v for s, v in a.timings.items() if s not in ("query_reasoning", "answer")) for a in answers]
        out[f"K={k}"] = {
            "stages": stages,
            "total": summary(totals),
            "all but the MLLM": summary(non_mllm),
            "prefill_tokens": {"query turn": counting.turns[0][0], "answer turn": counting.turns[1][0]},
            "generated_tokens": {"query turn": counting.turns[0][1], "answer turn": counting.turns[1][1]},
            **record,
        }
    return out


def answer_chats(suite: Suite, count: int, k: int) -> list[list[Message]]:
    """``count`` answer turns of K random candidate frames each (frames from the store), as stage 1 asks them."""
    features = suite.indexed()
    rng = np.random.default_rng(0)
    chats = []
    for _ in range(count):
        chosen = np.sort(rng.choice(features.num_frames, size=min(k, features.num_frames), replace=False))
        times = [float(features.timestamps[i]) for i in chosen]
        frames = load_frames(suite.video, times, 448 * 448, store=suite.store, info=features.video_info)
        chats.append(answer_prompt("What colour is the screen?", list(OPTIONS), list(frames), times))
    return chats


def section_answering(suite: Suite) -> dict[str, Any]:
    args, device = suite.args, suite.device
    chats = answer_chats(suite, args.answer_batch, args.stage2_k)
    generation = replace(DEFAULT_ANSWER_GENERATION, max_new_tokens=args.answer_tokens)
    suite.mllm.complete(chats[0], generation)  # warm-up
    out: dict[str, Any] = {"answers": len(chats), "k": args.stage2_k}
    record: dict[str, Any] = {}
    with peak_memory(device, record):
        seconds, _ = timed(lambda: [suite.mllm.complete(chat, generation) for chat in chats], 1, device)
    out["one at a time"] = summary(seconds, answers_per_s=len(chats) / seconds[0], **record)
    record = {}
    with peak_memory(device, record):
        seconds, _ = timed(lambda: suite.mllm.complete_batch(chats, generation), 1, device)
    out["batched"] = summary(seconds, answers_per_s=len(chats) / seconds[0], **record)
    out["batched / one at a time (answers per second)"] = (
        out["batched"]["answers_per_s"] / out["one at a time"]["answers_per_s"]
    )
    # Stage 1's answer_reward "gold_probability": one forward pass per answer, no decoding.
    letters = [chr(ord("A") + i) for i in range(len(OPTIONS))]
    record = {}
    with peak_memory(device, record):
        seconds, _ = timed(lambda: [suite.mllm.option_probabilities(chat, letters) for chat in chats], 1, device)
    out["gold probability, one at a time"] = summary(seconds, answers_per_s=len(chats) / seconds[0], **record)
    record = {}
    with peak_memory(device, record):
        seconds, _ = timed(lambda: suite.mllm.option_probabilities_many(chats, [letters] * len(chats)), 1, device)
    out["gold probability, batched"] = summary(seconds, answers_per_s=len(chats) / seconds[0], **record)
    return out


def spread_rewards(group: list[Rollout]) -> list[Rollout]:
    """Rewards 0, 1, ..., G-1: every rollout gets a non-zero GRPO advantage, as in a learning run."""
    return [replace(rollout, reward=float(index)) for index, rollout in enumerate(group)]


def section_stage2(suite: Suite) -> dict[str, Any]:
    args, device = suite.args, suite.device
    features = suite.indexed()
    qa = QAItem(
        id="gpu-suite", video=str(suite.video), question="What colour is the screen?", options=OPTIONS, answer="A"
    )
    example = TrainExample(qa=qa, features=features)
    sampler = get_sampler("usampler", device=device)
    out: dict[str, Any] = {"group_size": args.group_size, "k": args.stage2_k}
    groups = None
    for finetune, checkpointing in (("lora", False), ("lora", True), ("full", True), ("full", False)):
        label = f"{finetune}, gradient checkpointing {'on' if checkpointing else 'off'}"
        if time.perf_counter() > suite.deadline:
            out[label] = {"skipped": "time budget spent"}
            continue
        config = Stage2Config(
            k=args.stage2_k,
            group_size=args.group_size,
            finetune=finetune,
            gradient_checkpointing=checkpointing,
            query_max_new_tokens=args.query_tokens,
            answer_max_new_tokens=args.answer_tokens,
            warmup_steps=0,
        )
        record: dict[str, Any] = {}
        trainer = None
        try:
            with peak_memory(device, record):
                trainer = Stage2Trainer(suite.mllm, sampler, suite.encoder, config, frame_store=suite.store)
                with suite.mllm.reusing_encodings():
                    if groups is None:
                        seconds, groups = timed(lambda trainer=trainer: trainer.rollout([example]), 1, device)
                        out["rollout (LoRA)"] = summary(seconds)
                        groups = [spread_rewards(group) for group in groups]
                    seconds, stats = timed(lambda trainer=trainer, groups=groups: trainer.update(groups), 1, device)
            out[label] = summary(seconds, mllm_loss=stats.mllm_loss, **record)
        except torch.cuda.OutOfMemoryError as error:
            out[label] = {"does_not_fit": f"out of memory: {str(error).splitlines()[0]}", **record}
        finally:
            restore_base_model(suite.mllm, trainer)
            del trainer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def restore_base_model(mllm: TransformersMLLM, trainer: Stage2Trainer | None) -> None:
    """Undo what a trainer did to the shared model: LoRA adapters removed, checkpointing off, weights frozen."""
    from peft import PeftModel

    model = mllm.model
    if trainer is not None and isinstance(trainer.policy_model, PeftModel):
        model = trainer.policy_model.unload()
        mllm.model = model
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if hasattr(model, name):
            getattr(model, name)()
            break
    model.requires_grad_(False).eval()


def section_usampler(suite: Suite) -> dict[str, Any]:
    args, device = suite.args, suite.device
    sampler = get_sampler("usampler", device=device)
    out: dict[str, Any] = {"parameters": sampler.num_parameters, "device": str(sampler.device)}
    generator = torch.Generator().manual_seed(0)
    for frames in (3600, 10_000):
        sim = torch.randn(4, frames, generator=generator)  # on the host, as the pipeline's similarity is
        sampler.select(sim, 32)  # warm-up
        record: dict[str, Any] = {}
        with peak_memory(device, record):
            seconds, chosen = timed(lambda sim=sim: sampler.select(sim, 32), args.sampler_repeats, device)
        assert chosen.device.type == "cpu" and len(chosen) == 32
        out[f"forward + select, T={frames}, K=32"] = summary(seconds, **record)
    draw = torch.Generator(device=device).manual_seed(0)

    def train_step() -> None:
        sampler.module.zero_grad(set_to_none=True)
        drawn = sampler.sample(sim, 32, generator=draw)
        drawn.log_prob.backward()

    record = {}
    with peak_memory(device, record):
        seconds, _ = timed(train_step, args.sampler_repeats, device)
    out["training: forward + sample + backward, T=10000, K=32"] = summary(seconds, **record)
    return out


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    """One table row per measurement (a dict with ``median_s``) or per group of plain values."""
    lines = [
        "# msjoe GPU suite",
        "",
        f"command: `{results['command']}`",
        "",
        f"machine: {results['machine']}",
        "",
        "| section | measurement | median s | p90 s | peak GPU GiB | notes |",
        "|---|---|---:|---:|---:|---|",
    ]

    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).strip().splitlines()[-1] if isinstance(value, str) and value.strip() else str(value)

    def rows(section: str, name: str, value: dict[str, Any]) -> None:
        notes = ", ".join(
            f"{k} {text(v)}"
            for k, v in value.items()
            if not isinstance(v, dict) and k not in ("median_s", "p90_s", "samples_s", "peak_gpu_gib")
        )
        if "median_s" in value:
            peak = value.get("peak_gpu_gib")
            lines.append(
                f"| {section} | {name} | {value['median_s']:.4g} | {value['p90_s']:.4g} | "
                f"{'–' if peak is None else peak} | {notes} |"
            )
        elif notes:
            lines.append(f"| {section} | {name or '(settings)'} | | | | {notes} |")
        for key, item in value.items():
            if isinstance(item, dict):
                rows(section, f"{name}: {key}" if name else key, item)

    for section, value in results["sections"].items():
        rows(section, "", value)
    lines += ["", *[f"- {note}" for note in results["notes"]], ""]
    return "\n".join(lines)


def save(out: Path, results: dict[str, Any]) -> None:
    write_bytes_atomically(out / "results.json", (json.dumps(results, indent=2, default=str) + "\n").encode())
    write_bytes_atomically(out / "results.md", markdown(results).encode())


def machine_line(device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    import transformers

    return (
        f"{gpu}; {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--tiny", action="store_true", help="smoke-test models on the CPU, smaller defaults")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="bfloat16", help="weights of both models (default bfloat16)")
    parser.add_argument("--attn-implementation", default="sdpa", help="the MLLM's attention (real size)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--video-minutes", type=float, default=None, help="generated video (default 60; tiny 2)")
    parser.add_argument("--video-parts", type=int, default=None, help="pieces generated in parallel (default: cores)")
    parser.add_argument("--video-dir", default=None, help="where the video is generated or found (default: in --out)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: half the cores)")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="budgets of the ask section (32 64)")
    parser.add_argument("--stage2-k", type=int, default=None, help="K of answering and stage 2 (32)")
    parser.add_argument("--group-size", type=int, default=None, help="G of stage 2 (8)")
    parser.add_argument("--answer-batch", type=int, default=None, help="answers in the answering section (8)")
    parser.add_argument("--query-tokens", type=int, default=None, help="query turn token budget (128)")
    parser.add_argument("--answer-tokens", type=int, default=None, help="answer turn token budget (32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed asks per K (3; tiny 2)")
    parser.add_argument("--sampler-repeats", type=int, default=20, help="timed U-Sampler calls")
    parser.add_argument("--budget-s", type=float, default=None, help="skip what is left after this (420; tiny 170)")
    parser.add_argument("--work-dir", default=None, help="scratch folder (models, caches; default: the system's temp)")
    args = parser.parse_args(argv)
    real = dict(video_minutes=60.0, ks=[32, 64], stage2_k=32, group_size=8, answer_batch=8, query_tokens=128,
                answer_tokens=32, repeats=3, budget_s=420.0)  # fmt: skip
    tiny = dict(video_minutes=1.0, ks=[4, 8], stage2_k=4, group_size=2, answer_batch=2, query_tokens=8,
                answer_tokens=4, repeats=2, budget_s=170.0)  # fmt: skip
    for name, value in (tiny if args.tiny else real).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    cores = os.cpu_count() or 1
    args.workers = args.workers if args.workers is not None else max(1, min(8, cores // 2))
    args.video_parts = args.video_parts if args.video_parts is not None else max(1, min(16, cores))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": shlex.join(["python", "bench/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_line(device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sections": {},
        "notes": [],
    }
    with tempfile.TemporaryDirectory(prefix="msjoe-gpu-suite-", dir=args.work_dir) as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        with quiet_transformers():
            encoder, mllm = build_models(args, device, dtype, work)
        sizes = [sum(p.numel() for p in model.parameters()) for model in (encoder.model, mllm.model)]
        results["notes"].append(
            f"models built in {time.perf_counter() - start:.0f} s: encoder {sizes[0]:,} parameters, MLLM {sizes[1]:,} "
            f"({args.dtype}, {device})"
        )
        suite = Suite(args, device, dtype, encoder, mllm, work, deadline=started + args.budget_s)
        sections = {
            "index": section_index,
            "ask": section_ask,
            "answering": section_answering,
            "stage2": section_stage2,
            "usampler": section_usampler,
        }
        for name in args.sections:
            elapsed = time.perf_counter() - started
            if time.perf_counter() > suite.deadline:
                results["sections"][name] = {
                    "skipped": f"time budget ({args.budget_s:.0f} s) spent after {elapsed:.0f} s"
                }
            else:
                section_start = time.perf_counter()
                try:
                    results["sections"][name] = sections[name](suite)
                except Exception:
                    results["sections"][name] = {"error": traceback.format_exc(limit=8)}
                results["sections"][name]["section_seconds"] = round(time.perf_counter() - section_start, 1)
            results["notes"] = [*results["notes"][:1], *suite.notes]
            save(out, results)
            print(f"{name}: done after {time.perf_counter() - started:.0f} s", flush=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    results["notes"].append(f"whole run {time.perf_counter() - started:.0f} s, peak resident memory {peak_rss:.1f} GiB")
    save(out, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
