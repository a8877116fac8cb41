"""How often the policy's greedy read (chain of conditional modes) is the joint mode of its ordered draw.

Enumerates every ordered selection for small T and K (random Gaussian logits of scale ``s``) and compares the
greedy sequence with the most probable one. Run: ``python bench/policy_mode.py``.
"""

from __future__ import annotations

import itertools
import math

import torch

from msjoe.samplers import policy


def main() -> None:
    print("| T | K | width | logit scale | cases | greedy = joint mode | mean P(greedy) / P(mode) |")
    print("|---|---|---|---|---|---|---|")
    for num_frames, k, width in [(8, 2, 1), (8, 3, 1), (9, 3, 2), (10, 3, 1)]:
        for scale in (1.0, 3.0):
            agree, ratios = 0, []
            for seed in range(200):
                logits = scale * torch.randn(
                    num_frames, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
                )
                best, best_p = None, -math.inf
                for order in itertools.permutations(range(num_frames), k):
                    try:
                        p = policy.log_prob(logits, torch.tensor(order), width).item()
                    except ValueError:
                        continue
                    if p > best_p:
                        best, best_p = order, p
                greedy = policy.greedy(logits, k, width)
                greedy_p = policy.log_prob(logits, greedy, width).item()
                agree += tuple(greedy.tolist()) == best
                ratios.append(math.exp(greedy_p - best_p))
            mean_ratio = sum(ratios) / len(ratios)
            print(f"| {num_frames} | {k} | {width} | {scale:g} | 200 | {agree / 200:.0%} | {mean_ratio:.3f} |")


if __name__ == "__main__":
    main()
