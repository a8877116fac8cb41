"""How much room the sampler simulator leaves above the U-Sampler's similarity prior, with hand-made scores.

    python bench/simulator_headroom.py        # ~1 min on one CPU thread

The untrained U-Sampler ranks frames by the max-over-queries z-score (its prior) and picks with NMS. Evidence in
the simulator also registers weakly on the queries that target other aspects of the question, while look-alike
distractors match one query only, so scores that add the mean over queries, or smooth over neighbouring frames,
could separate them. Each score here is ranked with the same NMS rule (radius 4) on the validation split used to
choose the radius (split seed 2); the gap to the first row bounds what a learned correction of this simple kind
can add.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from msjoe.samplers.selection import topk_nms
from msjoe.samplers.usampler import USamplerConfig
from msjoe.sim.planted import evaluate_sampler, generate_items

VALIDATION_SPLIT = 2


def zscore(sim: torch.Tensor) -> torch.Tensor:
    return (sim - sim.mean(-1, keepdim=True)) / sim.std(-1, keepdim=True).clamp_min(1e-6)


def score_rule(alpha: float, smooth: bool, radius: int):
    def select(sim: torch.Tensor, k: int) -> torch.Tensor:
        z = zscore(sim.float())
        score = z.max(0).values + alpha * z.mean(0)
        if smooth:  # mean over each frame and its two neighbours
            score = torch.nn.functional.avg_pool1d(score[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
        return topk_nms(score, k, radius)

    return select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300, help="validation items")
    args = parser.parse_args()
    torch.set_num_threads(1)
    radius = USamplerConfig().nms_radius
    items = generate_items(args.items, split_seed=VALIDATION_SPLIT, budget=16)
    print(f"Command: `{shlex.join(['python', 'bench/simulator_headroom.py', *sys.argv[1:]])}`\n")
    print(f"{len(items)} validation items (split seed {VALIDATION_SPLIT}), NMS radius {radius}.\n")
    print("| score | accuracy K=8 | accuracy K=16 |\n|---|---:|---:|")
    for alpha in (0.0, 0.5, 1.0, 2.0):
        for smooth in (False, True):
            name = "max z" + (f" + {alpha} · mean z" if alpha else "") + (", smoothed over 3 frames" if smooth else "")
            accuracies = [evaluate_sampler(score_rule(alpha, smooth, radius), items, k).accuracy for k in (8, 16)]
            print(f"| {name} | {accuracies[0]:.3f} | {accuracies[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
