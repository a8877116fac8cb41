"""Stage-1 stability diagnostics: train the default U-Sampler on the simulator over a grid of learning rates and
seeds, and log what a divergence looks like from the inside.

    python bench/diag_stage1_stability.py      # the grid: 5e-4, 1e-3, 2e-3 constant, cosine 1e-3 and 3e-3; seeds 0-2
    python bench/diag_stage1_stability.py --runs constant:2e-3 --seeds 0 --steps 300 --layers   # one run, verbose

Every ``--eval-every`` steps it records, as one JSON line per evaluation in ``--out``:

- per-layer activation RMS (over valid positions) of every encoder/decoder block, down/up-sampling layer, the
  global context and the head's input, averaged over the training steps since the last evaluation;
- the logits of held-out items (split seed 1): spread (max - min, mean and worst item), standard deviation,
  normalised entropy ``H / log T`` (1 = uniform), the share of the probability mass on the evidence spans, and
  the concentration on one phase of the U-Net's stride grid (``P * max_r mass(t mod P = r)``, 1 when the mass
  ignores the grid, P when it all sits on one phase: the "position artefact" the diverging runs collapsed onto);
- the prior gain, the head's weight norm, the gradient norm before clipping, the rollout accuracy;
- held-out simulated accuracy at K = 8 and 16 for each inference rule.

A run counts as **diverged** when a loss or logit is not finite, the worst held-out logit spread exceeds
``--max-spread`` or an activation RMS exceeds ``--max-rms``. The summary table at the end gives, per run, whether it
diverged, the extremes seen and the final held-out accuracies. Runs are sequential on one thread: on a shared
machine, one training run at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from msjoe.samplers.selection import default_nms_radius, quantile_indices, topk_indices, topk_nms
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.sim.planted import SimulatedAnswerer, SimulatedItem, generate_items, item_stream
from msjoe.train.stage1 import Stage1Config, Stage1Trainer

TRAIN_SPLIT, HELD_OUT_SPLIT = 0, 1
DEFAULT_RUNS = ("constant:5e-4", "constant:1e-3", "constant:2e-3", "cosine:1e-3", "cosine:3e-3")
BUDGETS = (8, 16)
RULES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "nms2": lambda logits, k: topk_nms(logits, k, 2),
    "nms4": lambda logits, k: topk_nms(logits, k, 4),
    "nms6": lambda logits, k: topk_nms(logits, k, 6),
    "nms": lambda logits, k: topk_nms(logits, k, default_nms_radius(logits.numel(), k)),
    "topk": topk_indices,
    "quantile": lambda logits, k: quantile_indices(torch.softmax(logits, dim=-1), k),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="schedule:peak_lr, e.g. cosine:1e-3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=Stage1Config().steps)
    parser.add_argument("--batch-size", type=int, default=Stage1Config().batch_size)
    parser.add_argument("--samples-per-item", type=int, default=Stage1Config().samples_per_item)
    parser.add_argument("--entropy-coef", type=float, default=0.0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--held-out", type=int, default=200, help="held-out items per evaluation")
    parser.add_argument("--max-spread", type=float, default=100.0, help="divergence: worst held-out max - min logit")
    parser.add_argument("--max-rms", type=float, default=100.0, help="divergence: largest activation RMS")
    parser.add_argument("--layers", action="store_true", help="print the per-layer RMS at each evaluation")
    parser.add_argument("--out", type=Path, default=Path("diag_stage1_stability.jsonl"))
    return parser.parse_args()


class ActivationRecorder:
    """Forward hooks that keep the RMS over valid positions of chosen submodules' outputs."""

    def __init__(self, module: nn.Module) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)
        self.handles = []
        for name, sub in module.named_modules():
            level_module = name.count(".") == 1 and name.split(".")[0] in ("encoder", "decoder", "down", "up")
            if level_module or name in ("query_encoder", "context", "head_norm"):
                self.handles.append(sub.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            tensor = tensor.detach().float()
            # Padded positions are zero in every channel; leave them out of the mean.
            valid = (tensor != 0).any(dim=1).sum().clamp_min(1)
            self.values[name].append(float((tensor.square().sum() / (valid * tensor.shape[1])).sqrt()))

        return record

    def pop_means(self) -> dict[str, float]:
        means = {name: float(np.mean(v)) for name, v in self.values.items()}
        self.values.clear()
        return means


def phase_concentration(probs: torch.Tensor, period: int) -> float:
    """``period * max_r P(t mod period = r)``: 1 for mass that ignores the stride grid, ``period`` at worst."""
    if probs.numel() < 4 * period:
        return 1.0
    return float(period * torch.stack([probs[r::period].sum() for r in range(period)]).max())


def logit_statistics(logits: torch.Tensor, item: SimulatedItem) -> dict[str, float]:
    logits = logits.detach().float()
    log_p = torch.log_softmax(logits, dim=-1)
    probs = log_p.exp()
    entropy = float(-(probs * log_p).sum())
    evidence = torch.zeros(logits.numel(), dtype=torch.bool)
    for span in item.evidence:
        evidence[span.start : span.end] = True
    return {
        "spread": float(logits.max() - logits.min()),
        "std": float(logits.std()) if logits.numel() > 1 else 0.0,
        "entropy": entropy / math.log(logits.numel()) if logits.numel() > 1 else 1.0,
        "evidence_mass": float(probs[evidence].sum()),
        "phase4": phase_concentration(probs, 4),
        "phase16": phase_concentration(probs, 16),
    }


def evaluate(sampler: USampler, items: list[SimulatedItem]) -> dict[str, float]:
    """Held-out accuracy per (rule, K) and logit statistics (means, plus the worst spread and lowest entropy)."""
    rows: dict[str, list[float]] = defaultdict(list)
    sampler.module.eval()
    with torch.inference_mode():
        for item in items:
            logits = sampler.logits(item.sim)
            for key, value in logit_statistics(logits, item).items():
                rows[key].append(value)
            if not torch.isfinite(logits).all():
                rows["nonfinite"].append(1.0)
                continue
            for k in BUDGETS:
                for rule, select in RULES.items():
                    rows[f"acc{k}_{rule}"].append(item.answer_probability(select(logits, k)))
    sampler.module.train()
    result = {key: float(np.mean(values)) for key, values in rows.items()}
    result["spread_max"] = float(np.max(rows["spread"]))
    result["entropy_min"] = float(np.min(rows["entropy"]))
    return result


def train_one(args: argparse.Namespace, schedule: str, lr: float, seed: int, held_out: list, out) -> dict:
    torch.manual_seed(seed)
    sampler = USampler(config=USamplerConfig(), seed=seed)
    config = Stage1Config(
        learning_rate=lr,
        lr_schedule=schedule,
        steps=args.steps,
        batch_size=args.batch_size,
        samples_per_item=args.samples_per_item,
        entropy_coef=args.entropy_coef,
        seed=seed,
        log_interval=0,
    )
    trainer = Stage1Trainer(sampler, SimulatedAnswerer(seed=seed), config)
    recorder = ActivationRecorder(sampler.module)
    stream = item_stream(split_seed=TRAIN_SPLIT, budget=config.k)
    label = f"{schedule}:{lr:g} seed {seed}"
    summary = {"run": label, "diverged": False, "max_spread": 0.0, "min_entropy": 1.0, "max_rms": 0.0}
    window: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            evaluation = evaluate(sampler, held_out)
            recorder.pop_means()  # the evaluation's own forward passes are not training activations
            train = {key: float(np.mean([w[key] for w in window])) for key in window[0]} if window else {}
            activations = {k[4:]: v for k, v in train.items() if k.startswith("rms:")}
            row = {"run": label, "step": step, "seconds": time.perf_counter() - started, "eval": evaluation}
            row["train"] = {k: v for k, v in train.items() if not k.startswith("rms:")}
            row["activation_rms"] = activations
            out.write(json.dumps(row) + "\n")
            out.flush()
            largest = max(activations.values(), default=0.0)
            summary["max_spread"] = max(summary["max_spread"], evaluation["spread_max"])
            summary["min_entropy"] = min(summary["min_entropy"], evaluation["entropy_min"])
            summary["max_rms"] = max(summary["max_rms"], largest)
            nonfinite = "nonfinite" in evaluation or not all(math.isfinite(v) for v in train.values())
            if nonfinite or evaluation["spread_max"] > args.max_spread or largest > args.max_rms:
                summary["diverged"] = True
                summary.setdefault("diverged_at", step)
            print(
                f"{label} step {step:4d}: acc K=8 nms2 {evaluation.get('acc8_nms2', float('nan')):.3f}, "
                f"K=16 nms2 {evaluation.get('acc16_nms2', float('nan')):.3f}; spread mean "
                f"{evaluation['spread']:.1f} max {evaluation['spread_max']:.1f}; entropy {evaluation['entropy']:.3f}; "
                f"phase4 {evaluation['phase4']:.2f} phase16 {evaluation['phase16']:.2f}; evidence mass "
                f"{evaluation['evidence_mass']:.3f}; largest RMS {largest:.2f}; gain {train.get('prior_gain', 1):.3f}; "
                f"|head| {train.get('head_norm', 0):.3f}; grad norm {train.get('grad_norm', 0):.2f}; "
                f"rollout acc {train.get('rollout_accuracy', float('nan')):.3f}",
                file=sys.stderr,
                flush=True,
            )
            if args.layers and activations:
                print("   " + " ".join(f"{k}={v:.2f}" for k, v in activations.items()), file=sys.stderr)
            window = []
            if nonfinite:
                break
            summary["final"] = evaluation
            summary.setdefault("initial", evaluation)
        if step == args.steps:
            break
        batch = [next(stream) for _ in range(config.batch_size)]
        try:
            stats = trainer.step(batch)
        except Exception as exc:  # NonFiniteLossError: the run diverged to NaN/inf
            summary["diverged"] = True
            summary.setdefault("diverged_at", step)
            print(f"{label} step {step}: {type(exc).__name__}: {exc}", file=sys.stderr)
            break
        record = {f"rms:{k}": v for k, v in recorder.pop_means().items()}
        module = sampler.module
        record["prior_gain"] = float(module.prior_gain.detach()) if module.prior_gain is not None else 0.0
        record["head_norm"] = float(module.head.weight.detach().norm())
        record["grad_norm"] = stats.grad_norm
        record["rollout_accuracy"] = stats.accuracy
        record["entropy"] = stats.entropy
        window.append(record)
    for handle in recorder.handles:
        handle.remove()
    summary["seconds"] = time.perf_counter() - started
    return summary


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    command = shlex.join(["python", "bench/diag_stage1_stability.py", *sys.argv[1:]])
    held_out = generate_items(args.held_out, split_seed=HELD_OUT_SPLIT, budget=Stage1Config().k)
    summaries = []
    with args.out.open("w") as out:
        out.write(json.dumps({"command": command}) + "\n")
        for run in args.runs:
            schedule, lr = run.split(":")
            for seed in args.seeds:
                summaries.append(train_one(args, schedule, float(lr), seed, held_out, out))
    print(f"Command: `{command}`\n")
    print(
        f"{args.steps} steps, {args.batch_size} items x {args.samples_per_item} draws per step; held-out: "
        f"{args.held_out} items. Diverged = non-finite, worst held-out logit spread > {args.max_spread:g} or an "
        f"activation RMS > {args.max_rms:g}.\n"
    )
    keys = ("acc8_nms4", "acc16_nms4", "acc8_nms2", "acc16_nms2", "acc8_topk", "acc16_topk")
    print(
        "| run | diverged | largest RMS | worst logit spread | lowest entropy | "
        + " | ".join(f"{key.split('_')[0].replace('acc', 'K=')} {key.split('_')[1]}" for key in keys)
        + " |"
    )
    print("|---|---|---:|---:|---:|" + "---:|" * len(keys))
    for s in summaries:
        final, initial = s.get("final", {}), s.get("initial", {})
        diverged = f"yes (step {s['diverged_at']})" if s["diverged"] else "no"
        cells = [
            f"{final.get(key, float('nan')):.3f} ({final.get(key, float('nan')) - initial.get(key, float('nan')):+.3f})"
            for key in keys
        ]
        print(
            f"| {s['run']} | {diverged} | {s['max_rms']:.2f} | {s['max_spread']:.1f} | {s['min_entropy']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    print("\nAccuracies: held-out simulated accuracy after training (change from the untrained network in brackets).")


if __name__ == "__main__":
    main()
