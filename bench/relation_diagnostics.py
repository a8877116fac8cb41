"""Why training does not learn the relation variants' offset: where `nms-z` lands, what training did to the logits,
and what a hand rule that looks beside the peaks gets.

    python bench/relation_diagnostics.py [--checkpoint bench/.cache/sim_family/runs/suppression=0.125__relations__seed0]

About 1 min on one CPU thread. The checkpoint is a U-Sampler trained on `relations` (bench/bench_sim_family.py,
``--stage final``); without it only the untrained network is read. Items: seed 1 of `relations` (validation), 150.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from msjoe.samplers import get_sampler
from msjoe.samplers.selection import topk_nms
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.sim.planted import SimulatedItem
from msjoe.sim.protocol import load_simulator

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / ".cache/sim_family/runs/suppression=0.125__relations__seed0"


def hits(chosen: torch.Tensor, start: int, end: int) -> bool:
    return bool(((chosen >= start) & (chosen < end)).any())


def max_z(sim: torch.Tensor) -> torch.Tensor:
    z = (sim - sim.mean(-1, keepdim=True)) / sim.std(-1, keepdim=True).clamp_min(1e-6)
    return z.max(0).values


def flank_rule(near: int, far: int, share: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``(1 - share) · K`` picks of `nms-z`'s score, then ``share · K`` picks of a score that is high ``near`` to
    ``far`` candidates after a peak (or, with less weight, before one) and low on the peaks themselves."""

    def select(sim: torch.Tensor, k: int) -> torch.Tensor:
        score = max_z(sim.float())
        length = score.numel()
        floor = torch.full((far,), -1e9)
        after = torch.stack([torch.cat([floor[:d], score[: length - d]]) for d in range(near, far + 1)]).max(0).values
        before = torch.stack([torch.cat([score[d:], floor[:d]]) for d in range(near, far + 1)]).max(0).values
        flank = torch.maximum(after, 0.6 * before + 0.4 * after) - 0.5 * score
        radius = max(1, int(0.125 * length / k))
        on_peaks = k - int(share * k)
        first = topk_nms(score, on_peaks, radius)
        flank[first] = -1e9
        chosen = torch.unique(torch.cat([first, topk_nms(flank, k - on_peaks, radius)]))
        if chosen.numel() < k:  # suppression left too few: fill with the best remaining peaks
            taken = set(chosen.tolist())
            rest = [i for i in torch.argsort(score, descending=True).tolist() if i not in taken][: k - chosen.numel()]
            chosen = torch.cat([chosen, torch.tensor(rest, dtype=chosen.dtype)])
        return chosen[:k]

    return select


def logit_levels(sampler: USampler, items: list[SimulatedItem], k: int) -> np.ndarray:
    """Mean over relation items of (evidence max, anchor max, K-th highest) logit, each minus the item's median."""
    rows = []
    with torch.no_grad():
        for item in items:
            logits = sampler.logits(item.sim)
            (anchor,), (evidence,) = item.anchors, item.evidence
            median = logits.median()
            rows.append(
                [
                    float(logits[evidence.start : evidence.end].max() - median),
                    float(logits[anchor.start : anchor.end].max() - median),
                    float(torch.topk(logits, k).values[-1] - median),
                ]
            )
    return np.asarray(rows).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--items", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"Command: `{shlex.join(['python', 'bench/relation_diagnostics.py', *sys.argv[1:]])}`\n")
    items = list(load_simulator("relations").items(args.items, seed=1))
    relation = [item for item in items if item.kind == "relation"]
    nms_z = get_sampler("nms-z")

    print(f"`nms-z` on the {len(relation)} relation items among {len(items)} `relations` items (seed 1):\n")
    print("| K | picks a frame of the anchor | picks a frame of the evidence |\n|---|---|---|")
    for k in (8, 16):
        chosen = [nms_z.select(item.sim, k) for item in relation]
        anchor = np.mean(
            [hits(c, item.anchors[0].start, item.anchors[0].end) for c, item in zip(chosen, relation, strict=True)]
        )
        found = np.mean([item.coverage(c) > 0 for c, item in zip(chosen, relation, strict=True)])
        print(f"| {k} | {anchor:.0%} | {found:.0%} |")

    print("\nLogits above the item's median, mean over the relation items, K = 16:\n")
    print("| sampler | evidence | anchor | 16th-highest frame |\n|---|---|---|---|")
    samplers = {"untrained (seed 0)": USampler(config=USamplerConfig(suppression=0.125), seed=0)}
    if args.checkpoint.is_dir():
        samplers[f"trained ({args.checkpoint.name})"] = USampler.from_pretrained(args.checkpoint)
    else:
        print(f"(no checkpoint at {args.checkpoint}: run bench/bench_sim_family.py --stage final first)")
    for name, sampler in samplers.items():
        evidence, anchor, cut = logit_levels(sampler, relation, 16)
        print(f"| {name} | {evidence:.2f} | {anchor:.2f} | {cut:.2f} |")

    print("\nA hand rule that spends part of the budget beside the peaks (3-25 candidates), recall minus `nms-z`:\n")
    print("| variant | K | nms-z | 1/4 beside | 1/2 beside |\n|---|---|---|---|---|")
    for name in ("relations", "relations_long", "planted"):
        variant_items = items if name == "relations" else list(load_simulator(name).items(args.items, seed=1))
        for k in (8, 16):
            base = np.array([item.coverage(nms_z.select(item.sim, k)) for item in variant_items])
            cells = []
            for share in (0.25, 0.5):
                rule = flank_rule(3, 25, share)
                diff = np.array([item.coverage(rule(item.sim, k)) for item in variant_items]) - base
                cells.append(f"{diff.mean():+.3f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.3f}")
            print(f"| {name} | {k} | {base.mean():.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
