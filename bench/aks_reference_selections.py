"""Does the authors' AKS keep segments whole on their own BLIP scores? Read it off their released selections.

    git clone https://github.com/ncTimTang/AKS && python bench/aks_reference_selections.py AKS

``selected_frames/longvideobench/blip/longvideobench_32.json`` holds the frames AKS chose (K = 32, depth 5) for
each LongVideoBench validation question, in the order of ``datasets/longvideobench/include_frame_idx.json``
(``evaluation/change_score.py`` pairs them by position). Frames are ``j * int(fps)`` for candidate ``j`` at 1 fps,
so the step is the gcd of the chosen frame numbers. A judge that never passes splits every segment down to depth
5 and takes ``K / 32`` = 1 frame from each of the 32 leaves; the script counts the items whose frames fit that
pattern for some T within -2 % / +6 % of the annotated duration (T is ``len(video) / int(fps)``, not exactly the
duration). Every other item had at least one segment kept whole. Also printed: the most frames any 1/32 of the
video received, as a multiple of the leaf share.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter
from functools import reduce
from pathlib import Path

SELECTIONS = "selected_frames/longvideobench/blip/longvideobench_32.json"
ANNOTATIONS = "datasets/longvideobench/include_frame_idx.json"
BUDGET, DEPTH = 32, 5


def leaves(num_frames: int, depth: int) -> list[tuple[int, int]]:
    """The reference's halving (``score[:len // 2]``, ``score[len // 2:]``) applied ``depth`` times."""
    segments = [(0, num_frames)]
    for _ in range(depth):
        segments = [half for a, b in segments for half in ((a, a + (b - a) // 2), (a + (b - a) // 2, b))]
    return segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/ncTimTang/AKS")
    args = parser.parse_args()
    selections = json.loads((args.checkout / SELECTIONS).read_text())
    annotations = json.loads((args.checkout / ANNOTATIONS).read_text())
    share = BUDGET // 2**DEPTH
    one_per_leaf = short = 0
    crowding = []
    for annotation, frames in zip(annotations, selections, strict=True):
        if len(frames) < BUDGET:  # T < K: the reference returns every frame
            short += 1
            continue
        step = reduce(math.gcd, [f for f in frames if f > 0])
        candidates = [f // step for f in frames]
        duration = annotation["duration"]
        fits = any(
            all(sum(a <= c < b for c in candidates) == share for a, b in leaves(num_frames, DEPTH))
            for num_frames in range(int(duration * 0.98), int(duration * 1.06) + 2)
            if num_frames > max(candidates)
        )
        one_per_leaf += fits
        per_32nd = Counter(min(31, int(c * 32 / max(duration, 1.0))) for c in candidates)
        crowding.append(max(per_32nd.values()) / share)
    judged = len(selections) - short
    print(f"{len(selections)} items, {short} shorter than K = {BUDGET} (all frames returned), {judged} judged")
    print(f"one frame per depth-{DEPTH} leaf (the judge never passed): {one_per_leaf}")
    print(f"at least one segment kept whole: {judged - one_per_leaf} ({(judged - one_per_leaf) / judged:.0%})")
    deciles = statistics.quantiles(crowding, n=10)
    print(
        f"most frames in one 1/32 of the video, in leaf shares: p10 {deciles[0]:g}, median {deciles[4]:g}, "
        f"p90 {deciles[8]:g}"
    )


if __name__ == "__main__":
    main()
