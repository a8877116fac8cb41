"""U-Sampler speed and memory on CPU: inference (forward + select, each rule), training (forward + sample +
log-probs, and backward), and long inputs (T = 10,000 and 50,000) with peak memory.

Goal: forward + select at T = 3,600, K = 32, 4 queries under 20 ms on a laptop-class CPU, batch 1, default threads.

    python bench/bench_usampler.py                      # the default network, a markdown table
    python bench/bench_usampler.py --widths 8,16,32,64  # any other architecture

Timings are medians and 90th percentiles of ``--runs`` runs after ``--warmup`` runs. The load average is printed
before and after: on a shared machine, compare the medians only with runs made under a similar load. Peak memory is
the growth of the process's maximum resident set while one case runs (each case in a fresh subprocess, after
the model and input are built), with the process's total peak in brackets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from msjoe.samplers.usampler import INFERENCE_RULES, USampler, USamplerConfig


def similarity(num_queries: int, num_frames: int, seed: int = 0) -> torch.Tensor:
    """CLIP-like cosines (0.15-0.35) with a few smooth bumps, so NMS has clusters to suppress."""
    generator = torch.Generator().manual_seed(seed)
    base = 0.2 + 0.01 * torch.randn(num_queries, num_frames, generator=generator)
    time_axis = torch.arange(num_frames, dtype=torch.float32)
    for q in range(num_queries):
        for centre in torch.randint(num_frames, (3,), generator=generator).tolist():
            base[q] += 0.1 * torch.exp(-(((time_axis - centre) / max(2.0, num_frames / 200)) ** 2))
    return base


def timed(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """(median, p90) wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.9 * len(samples)))]


def build(args: argparse.Namespace, **overrides: object) -> USampler:
    config = USamplerConfig()
    if args.widths:
        config = replace(config, widths=tuple(int(w) for w in args.widths.split(",")))
    if args.kernel_size:
        config = replace(config, kernel_size=args.kernel_size)
    return USampler(config=replace(config, **overrides), seed=0)


def training_step(sampler: USampler, sim: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    draw = sampler.sample(sim, k, generator=generator)
    return draw.log_prob + 0.0 * draw.log_prob_independent  # both estimators computed, as a trainer would log both


def run_child(args: argparse.Namespace) -> None:
    """One long-input case in this (fresh) process: time it and report the peak-memory growth as JSON."""
    sampler = build(args)
    sim = similarity(4, args.child_frames)
    generator = torch.Generator().manual_seed(0)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.child_mode == "inference":

        def case() -> object:
            with torch.inference_mode():
                return sampler.select(sim, args.k)

    else:

        def case() -> object:
            sampler.module.zero_grad(set_to_none=True)
            training_step(sampler, sim, args.k, generator).backward()
            return None

    runs = max(3, args.runs // 5)
    median, p90 = timed(case, runs=runs, warmup=2)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth_mb, peak_mb = (peak_kb - baseline_kb) / 1024, peak_kb / 1024
    print(json.dumps({"median": median, "p90": p90, "growth_mb": growth_mb, "peak_mb": peak_mb, "runs": runs}))


def long_input_case(args: argparse.Namespace, num_frames: int, mode: str) -> dict:
    command = [sys.executable, __file__, "--child-frames", str(num_frames), "--child-mode", mode]
    command += ["--k", str(args.k), "--runs", str(args.runs)]
    if args.widths:
        command += ["--widths", args.widths]
    if args.kernel_size:
        command += ["--kernel-size", str(args.kernel_size)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3600, help="T of the main cases")
    parser.add_argument("--k", type=int, default=32, help="frame budget K")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--long", type=int, nargs="*", default=[10_000, 50_000], help="long-input T values")
    parser.add_argument("--widths", default="", help="override USamplerConfig.widths, e.g. 8,16,32")
    parser.add_argument("--kernel-size", type=int, default=0, help="override USamplerConfig.kernel_size")
    parser.add_argument("--child-frames", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_frames:
        run_child(args)
        return

    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    sampler = build(args)
    print(
        f"network: {sampler.num_parameters:,} parameters, widths {list(sampler.config.widths)}, "
        f"kernel {sampler.config.kernel_size}, stride {sampler.module.stride}"
    )
    sim = similarity(args.queries, args.frames)
    t, k, n = args.frames, args.k, args.queries
    rows: list[tuple[str, float, float, str]] = []

    def forward() -> object:
        with torch.inference_mode():
            return sampler.logits(sim)

    rows.append((f"forward only (T={t}, Nq={n})", *timed(forward, args.runs, args.warmup), ""))
    for rule in INFERENCE_RULES:
        ruled = build(args, inference_rule=rule)
        rows.append(
            (
                f"forward + select, rule={rule} (T={t}, K={k})",
                *timed(lambda s=ruled: s.select(sim, k), args.runs, args.warmup),
                "",
            )
        )
    generator = torch.Generator().manual_seed(0)
    rows.append(
        (
            f"training: forward + sample + both log-probs (T={t}, K={k})",
            *timed(lambda: training_step(sampler, sim, k, generator), args.runs, args.warmup),
            "",
        )
    )

    def backward_only() -> None:
        loss = training_step(sampler, sim, k, generator)
        sampler.module.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss.backward()
        backward_times.append((time.perf_counter() - start) * 1e3)

    backward_times: list[float] = []
    timed(backward_only, args.runs, args.warmup)
    backward_times = backward_times[args.warmup :]
    backward_times.sort()
    rows.append(
        (
            f"training: backward of the log-prob (T={t}, K={k})",
            statistics.median(backward_times),
            backward_times[int(0.9 * len(backward_times))],
            "",
        )
    )
    for num_frames in args.long:
        for mode, label in (
            ("inference", "forward + select (default rule)"),
            ("training", "forward + sample + backward"),
        ):
            result = long_input_case(args, num_frames, mode)
            memory = f"+{result['growth_mb']:.0f} MB (process {result['peak_mb']:.0f} MB)"
            rows.append((f"{label} (T={num_frames:,}, K={k})", result["median"], result["p90"], memory))

    print()
    print("| case | median ms | p90 ms | peak resident memory |")
    print("|---|---:|---:|---:|")
    for name, median, p90, memory in rows:
        print(f"| {name} | {median:.2f} | {p90:.2f} | {memory} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
