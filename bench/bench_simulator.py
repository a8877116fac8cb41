"""Stage-1 training of the U-Sampler on the sampler simulator, then every sampler on held-out simulated items.

    python bench/bench_simulator.py            # the full run (a few minutes of training on 2 CPU cores)
    python bench/bench_simulator.py --quick    # a smoke run: few steps, few held-out items
    python bench/bench_simulator.py --sweep-radii [--load FOLDER]   # choose the NMS radius on a validation split

The U-Sampler starts from ``USamplerConfig()`` (about 2M parameters) and is trained with stage-1 REINFORCE and the
difficulty-aware reward (:mod:`msjoe.train.stage1`) against the simulated answerer, on a stream of fresh training
items (split seed 0). Evaluation uses held-out items (split seed 1) at K = 8 and 16, for every baseline, the
untrained U-Sampler (its similarity prior alone) and the trained one, each with its three inference rules.

Metrics (:func:`msjoe.sim.planted.evaluate_sampler`): evidence recall = fraction of the evidence frames the answer
needs that the selection covers; span hits = fraction of evidence spans with a chosen frame; accuracy = the
simulated answerer's expected P(correct) (guess rate 0.25), ± its standard error over items. The last lines
compare the best trained rule with the best baseline on the same items (paired differences).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from msjoe.samplers import get_sampler
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.sim.planted import (
    SelectionScores,
    SimulatedAnswerer,
    SimulatedItem,
    evaluate_sampler,
    generate_items,
    item_stream,
)
from msjoe.train.stage1 import Stage1Config, Stage1Trainer

BASELINES: list[tuple[str, dict]] = [
    ("uniform", {}),
    ("topk", {}),
    ("bolt", {}),
    ("qframe", {"logit_scale": 100.0}),
    ("aks", {}),
    ("binmax", {}),
]
# The U-Sampler's inference rules: (rule, nms_radius). NMS with fixed radii of 2 to 6 candidates (2 skips the
# immediate neighbours only and still lets several frames of one event through), NMS with radius T/4K (a quarter of
# the even spacing, which at K = 8 suppresses whole events), plain top-K and quantile sampling of p.
USAMPLER_RULES: list[tuple[str, int | None]] = [
    ("nms", 2),
    ("nms", 3),
    ("nms", 4),
    ("nms", 6),
    ("nms", None),
    ("topk", None),
    ("quantile", None),
]
TRAIN_SPLIT, HELD_OUT_SPLIT, VALIDATION_SPLIT = 0, 1, 2
SWEPT_RADII: list[int | None] = [0, 1, 2, 3, 4, 5, 6, 8, 12, None]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Stage1Config()
    parser.add_argument("--steps", type=int, default=Stage1Config().steps, help="stage-1 optimiser steps")
    parser.add_argument("--quick", action="store_true", help="60 steps and 150 held-out items (a smoke run)")
    parser.add_argument("--held-out", type=int, default=1000, help="held-out items")
    parser.add_argument("--train-k", type=int, default=16, help="frames drawn per training rollout")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16], help="evaluation budgets K")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default=defaults.lr_schedule)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--samples-per-item", type=int, default=defaults.samples_per_item)
    parser.add_argument("--baseline", choices=["none", "group_mean"], default=defaults.baseline)
    parser.add_argument("--estimator", choices=["plackett_luce", "independent"], default=defaults.estimator)
    parser.add_argument("--entropy-coef", type=float, default=defaults.entropy_coef)
    parser.add_argument("--seed", type=int, default=0, help="seeds the network, the draws and the answerer")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (a second thread does not speed these sizes up)"
    )
    parser.add_argument("--save", type=Path, default=None, help="save the trained U-Sampler to this folder")
    parser.add_argument(
        "--sweep-radii",
        action="store_true",
        help="only evaluate NMS radii on validation items (split seed 2): the untrained network and --load",
    )
    parser.add_argument("--load", type=Path, default=None, help="a saved U-Sampler for --sweep-radii")
    parser.add_argument("--validation", type=int, default=400, help="validation items for --sweep-radii")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.held_out = 60, 150
    return args


def table_row(name: str, scores: dict[int, SelectionScores]) -> str:
    cells = []
    for result in scores.values():
        cells += [
            f"{result.evidence_recall:.3f}",
            f"{result.span_hit_rate:.3f}",
            f"{result.accuracy:.3f} ± {result.accuracy_stderr:.3f}",
        ]
    return f"| {name} | " + " | ".join(cells) + " |"


def evaluate_all(sampler: object, items: list, budgets: list[int]) -> dict[int, SelectionScores]:
    return {k: evaluate_sampler(sampler, items, k) for k in budgets}


def item_category(item: SimulatedItem) -> str:
    """A coarse kind of item: what the answer needs, and whether any query describes the evidence at all."""
    if all(target is None for target in item.query_targets):
        return "no informative query"
    if item.kind == "multi_hop":
        return f"multi-hop ({len(item.evidence)} spans)"
    needed = item.evidence[0].frames_needed
    return f"one span, {needed} frame{'s' if needed > 1 else ''}"


def logit_health(sampler: USampler, items: list[SimulatedItem]) -> str:
    """How peaked and how grid-locked the sampler's distributions are on ``items`` (what a divergence shows)."""
    spreads, entropies, phases = [], [], []
    with torch.inference_mode():
        for item in items:
            logits = sampler.logits(item.sim)
            log_p = torch.log_softmax(logits, dim=-1)
            probs = log_p.exp()
            spreads.append(float(logits.max() - logits.min()))
            entropies.append(float(-(probs * log_p).sum()) / np.log(item.num_frames))
            # 4 x the largest share of the mass on one phase of the stride-4 grid: 1 = ignores the grid, 4 = locked.
            phases.append(float(4 * torch.stack([probs[r::4].sum() for r in range(4)]).max()))
    return (
        f"logit spread (max - min) mean {np.mean(spreads):.1f}, worst {np.max(spreads):.1f}; entropy / log T mean "
        f"{np.mean(entropies):.3f}, lowest {np.min(entropies):.3f}; stride-4 phase concentration mean "
        f"{np.mean(phases):.2f} (1 = none, 4 = all mass on one phase)"
    )


def with_rule(sampler: USampler, rule: str, nms_radius: int | None = None) -> USampler:
    sampler.config = replace(sampler.config, inference_rule=rule, nms_radius=nms_radius)
    return sampler


def rule_label(rule: str, nms_radius: int | None) -> str:
    label = rule if rule != "nms" else "nms, radius " + ("T/4K" if nms_radius is None else str(nms_radius))
    defaults = USamplerConfig()
    is_default = rule == defaults.inference_rule and (rule != "nms" or nms_radius == defaults.nms_radius)
    return label + (" (default)" if is_default else "")


def sweep_radii(args: argparse.Namespace) -> None:
    """Accuracy of NMS with each radius in :data:`SWEPT_RADII` on validation items, never on the held-out split."""
    items = generate_items(args.validation, split_seed=VALIDATION_SPLIT, budget=args.train_k)
    samplers = {"untrained": USampler(config=USamplerConfig(), seed=args.seed)}
    if args.load is not None:
        samplers[f"loaded from {args.load}"] = USampler.from_pretrained(args.load)
    command = shlex.join(["python", "bench/bench_simulator.py", *sys.argv[1:]])
    print(f"Command: `{command}`\n")
    print(f"NMS radius sweep on {len(items)} validation items (split seed {VALIDATION_SPLIT}).\n")
    print("| sampler | K | " + " | ".join(rule_label("nms", r).removeprefix("nms, ") for r in SWEPT_RADII) + " |")
    print("|---|---:|" + "---:|" * len(SWEPT_RADII))
    for name, sampler in samplers.items():
        sampler.module.eval()
        for k in args.budgets:
            cells = [evaluate_sampler(with_rule(sampler, "nms", r), items, k).accuracy for r in SWEPT_RADII]
            print(f"| {name} | {k} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")


def main() -> None:
    args = parse_args()
    if args.sweep_radii:
        torch.set_num_threads(args.threads)
        sweep_radii(args)
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    command = shlex.join(["python", "bench/bench_simulator.py", *sys.argv[1:]])
    config = Stage1Config(
        learning_rate=args.lr,
        lr_schedule=args.schedule,
        steps=args.steps,
        k=args.train_k,
        batch_size=args.batch_size,
        samples_per_item=args.samples_per_item,
        baseline=args.baseline,
        estimator=args.estimator,
        entropy_coef=args.entropy_coef,
        seed=args.seed,
        log_interval=max(1, args.steps // 10),
    )

    started = time.perf_counter()
    held_out = generate_items(args.held_out, split_seed=HELD_OUT_SPLIT, budget=args.train_k)
    print(f"{len(held_out)} held-out items generated in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    results: dict[str, dict[int, SelectionScores]] = {}
    for name, options in BASELINES:
        label = name + (" (logit_scale 100)" if name == "qframe" else "")
        results[label] = evaluate_all(get_sampler(name, **options), held_out, args.budgets)

    sampler = USampler(config=USamplerConfig(), seed=args.seed)
    sampler.module.eval()
    untrained_health = logit_health(sampler, held_out)
    for rule, radius in USAMPLER_RULES:
        results[f"usampler untrained, {rule_label(rule, radius)}"] = evaluate_all(
            with_rule(sampler, rule, radius), held_out, args.budgets
        )

    trainer = Stage1Trainer(sampler, SimulatedAnswerer(seed=args.seed), config)
    train_started = time.perf_counter()
    history = trainer.train(item_stream(split_seed=TRAIN_SPLIT, budget=args.train_k))
    train_seconds = time.perf_counter() - train_started
    sampler.module.eval()
    trained_health = logit_health(sampler, held_out)
    trained_labels = []
    for rule, radius in USAMPLER_RULES:
        label = f"**usampler stage-1, {rule_label(rule, radius)}**"
        trained_labels.append(label)
        results[label] = evaluate_all(with_rule(sampler, rule, radius), held_out, args.budgets)
    if args.save is not None:
        defaults = USamplerConfig()
        with_rule(sampler, defaults.inference_rule, defaults.nms_radius).save_pretrained(args.save)

    # --- report ---------------------------------------------------------------------------------------------------
    print(f"Command: `{command}`\n")
    print(
        f"Stage 1: {len(history)} steps × {config.batch_size} items × {config.samples_per_item} draws "
        f"of K = {config.k} "
        f"in {train_seconds:.0f} s ({train_seconds / max(1, len(history)):.2f} s/step, {args.threads} threads); "
        f"lr {config.learning_rate} ({config.lr_schedule}), baseline {config.baseline}, estimator {config.estimator}, "
        f"entropy coef {config.entropy_coef}. Held-out: {len(held_out)} items (split seed {HELD_OUT_SPLIT}).\n"
    )
    tenth = max(1, len(history) // 10)
    curve = [np.mean([s.accuracy for s in history[i : i + tenth]]) for i in range(0, len(history), tenth)]
    print("Rollout accuracy by tenth of training: " + ", ".join(f"{a:.3f}" for a in curve) + "\n")
    print(f"Held-out logits, untrained: {untrained_health}.\n")
    print(f"Held-out logits, trained: {trained_health}.\n")

    header = (
        "| sampler | " + " | ".join(f"recall K={k} | span hits K={k} | accuracy K={k}" for k in args.budgets) + " |"
    )
    print(header)
    print("|---|" + "---:|" * (3 * len(args.budgets)))
    for name, scores in results.items():
        print(table_row(name, scores))

    baseline_labels = [label for label in results if not label.startswith(("usampler", "**usampler"))]
    untrained_labels = [label for label in results if label.startswith("usampler untrained")]
    print()
    default_label = next(label for label in trained_labels if "(default)" in label)
    for k in args.budgets:
        best_trained = max(trained_labels, key=lambda label: results[label][k].accuracy)
        best_baseline = max(baseline_labels, key=lambda label: results[label][k].accuracy)
        best_untrained = max(untrained_labels, key=lambda label: results[label][k].accuracy)
        untrained_same_rule = default_label.strip("*").replace("stage-1", "untrained")
        for mine, other in (
            (default_label, best_baseline),
            (best_trained, best_baseline),
            (default_label, untrained_same_rule),
            (best_trained, best_untrained),
        ):
            diff = np.subtract(results[mine][k].per_item_accuracy, results[other][k].per_item_accuracy)
            print(
                f"- K = {k}: {mine.strip('*')} minus {other}: accuracy "
                f"{diff.mean():+.3f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.3f} (paired over items)"
            )

    # Where the rules differ: accuracy by kind of item, at the largest budget.
    k = max(args.budgets)
    categories = [item_category(item) for item in held_out]
    names = sorted(set(categories))
    untrained_default = next(label for label in untrained_labels if "(default)" in label)
    shown = [*baseline_labels[-2:], untrained_default, *trained_labels]
    print(f"\nAccuracy by kind of item at K = {k} (items per kind in brackets):\n")
    print("| sampler | " + " | ".join(f"{name} ({categories.count(name)})" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    for label in shown:
        per_item = results[label][k].per_item_accuracy
        cells = [np.mean([a for a, c in zip(per_item, categories, strict=True) if c == name]) for name in names]
        print(f"| {label} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
