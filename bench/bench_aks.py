"""AKS on CLIP-like cosines: how often its judge keeps a segment whole, and what that does to recall vs bin-max.

    python bench/bench_aks.py                       # held-out items (split seed 1), K = 8 and 16
    python bench/bench_aks.py --sweep-thresholds    # choose match_threshold on validation items (split seeds 0, 2)
    python bench/bench_aks.py --simulator lvbench --simulator global    # variants of msjoe.sim instead

Items come from the default planted simulator (:class:`msjoe.sim.planted.SimulatorConfig`) or from the named
variants of the simulator family (:mod:`msjoe.sim.variants`; sweep only on validation ones). For each sampler
and budget K the table gives: the items on which the judge kept at least one segment whole (above the depth cap
``floor(log2 K)``, where every leaf is kept anyway) and those on which it kept the whole video; evidence recall;
and the paired differences to bin-max over the same items (recall and the simulated answerer's expected accuracy),
± their standard errors, plus the number of items whose chosen frames equal bin-max's.

The held-out run also isolates the effect of keeping segments whole. ``sigmoid(z - threshold)`` is increasing in
``z``, so two thresholds that split an item into the same leaves choose the same frames; with threshold 1 the judge
never passes on these items (see the sweep), so "match, threshold 1" is the same score treatment without the
adaptivity, and the paired difference to it over the items where the judge kept something is what adapting does.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import torch

from msjoe.samplers import get_sampler
from msjoe.samplers.aks import AKSSampler
from msjoe.sim.planted import SimulatedItem, SimulatorConfig, generate_items
from msjoe.sim.variants import get_variant

DEFAULT_SIMULATOR = "default"

HELD_OUT_SPLIT = 1
VALIDATION_SPLITS = (0, 2)
SWEPT_THRESHOLDS = (1.0, 2.0, 3.0, 4.0, 5.0)


def stderr(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def compare(name: str, sampler: AKSSampler, items: list[SimulatedItem], k: int) -> str:
    """One table row: adaptivity counts and paired differences to bin-max at budget ``k``."""
    binmax = get_sampler("binmax")
    depth_cap = min(sampler.max_depth, k.bit_length() - 1)
    kept_any = kept_video = identical = 0
    recall, recall_diff, accuracy_diff = [], [], []
    for item in items:
        segments = sampler.segments(sampler.frame_scores(item.sim), k)
        kept_any += any(segment.depth < depth_cap for segment in segments)
        kept_video += segments[0].depth == 0
        chosen, reference = sampler.select(item.sim, k), binmax.select(item.sim, k)
        identical += torch.equal(chosen, reference)
        recall.append(item.coverage(chosen))
        recall_diff.append(item.coverage(chosen) - item.coverage(reference))
        accuracy_diff.append(item.answer_probability(chosen) - item.answer_probability(reference))
    recall_diff_array, accuracy_diff_array = np.array(recall_diff), np.array(accuracy_diff)
    return (
        f"| {name} | {k} | {kept_any} | {kept_video} | {np.mean(recall):.3f} | "
        f"{recall_diff_array.mean():+.3f} ± {stderr(recall_diff_array):.3f} | "
        f"{accuracy_diff_array.mean():+.3f} ± {stderr(accuracy_diff_array):.3f} | {identical} |"
    )


def adaptivity_effect(adaptive: AKSSampler, control: AKSSampler, items: list[SimulatedItem], k: int) -> str:
    """Paired recall and accuracy differences ``adaptive - control`` over the items where they choose differently."""
    recall_diff, accuracy_diff = [], []
    for item in items:
        chosen, reference = adaptive.select(item.sim, k), control.select(item.sim, k)
        if not torch.equal(chosen, reference):
            recall_diff.append(item.coverage(chosen) - item.coverage(reference))
            accuracy_diff.append(item.answer_probability(chosen) - item.answer_probability(reference))
    if len(recall_diff) < 2:
        return f"- K = {k}: the two choose differently on {len(recall_diff)} items"
    recall_array, accuracy_array = np.array(recall_diff), np.array(accuracy_diff)
    return (
        f"- K = {k}, threshold {adaptive.match_threshold:g} minus {control.match_threshold:g} "
        f"on the {len(recall_diff)} items where they choose differently: "
        f"recall {recall_array.mean():+.3f} ± {stderr(recall_array):.3f}, "
        f"accuracy {accuracy_array.mean():+.3f} ± {stderr(accuracy_array):.3f}"
    )


def simulator_config(name: str, *, validation_only: bool) -> SimulatorConfig:
    """The default planted simulator or a named variant; choosing thresholds is refused on held-out variants."""
    if name == DEFAULT_SIMULATOR:
        return SimulatorConfig()
    variant = get_variant(name)
    if validation_only and variant.role != "validation":
        raise SystemExit(f"--sweep-thresholds runs on validation variants only; {name!r} is {variant.role}")
    return variant.config


HEADER = (
    "| sampler | K | items with a segment kept whole | whole video kept | recall | recall − bin-max | "
    "accuracy − bin-max | same frames as bin-max |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def sweep(name: str, config: SimulatorConfig, count: int, budgets: list[int]) -> None:
    """Every swept match_threshold on the validation splits of one simulator."""
    for split in VALIDATION_SPLITS:
        items = generate_items(count, config, split_seed=split)
        print(f"Simulator {name}, validation split seed {split}, {len(items)} items\n\n{HEADER}")
        for k in budgets:
            print(compare("aks (minmax)", AKSSampler(), items, k))
            for threshold in SWEPT_THRESHOLDS:
                sampler = AKSSampler(scores="match", match_threshold=threshold)
                print(compare(f"aks (match, threshold {threshold:g})", sampler, items, k))
        print()


def report(name: str, config: SimulatorConfig, count: int, budgets: list[int], threshold: float) -> None:
    """The reference, the chosen threshold and the never-adapting control on the held-out split of one simulator."""
    items = generate_items(count, config, split_seed=HELD_OUT_SPLIT)
    print(f"Simulator {name}, held-out split seed {HELD_OUT_SPLIT}, {len(items)} items\n\n{HEADER}")
    effects = []
    for k in budgets:
        print(compare("aks (minmax, reference)", AKSSampler(), items, k))
        match = AKSSampler(scores="match", match_threshold=threshold)
        print(compare(f"aks (match, threshold {threshold:g})", match, items, k))
        control = AKSSampler(scores="match", match_threshold=1.0)
        print(compare("aks (match, threshold 1: the control)", control, items, k))
        effects.append(adaptivity_effect(match, control, items, k))
    print("\nThe effect of keeping segments whole (paired, same score treatment):")
    print("\n".join(effects) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000, help="items per split")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16], help="frame budgets K")
    parser.add_argument("--match-threshold", type=float, default=3.0, help="for the scores='match' row")
    parser.add_argument(
        "--sweep-thresholds",
        action="store_true",
        help=f"only compare match_threshold in {SWEPT_THRESHOLDS} on validation splits {VALIDATION_SPLITS}",
    )
    parser.add_argument(
        "--simulator",
        action="append",
        default=None,
        help=f"'{DEFAULT_SIMULATOR}' (SimulatorConfig()) or a msjoe.sim variant name; repeatable",
    )
    args = parser.parse_args()
    names = args.simulator or [DEFAULT_SIMULATOR]
    configs = {name: simulator_config(name, validation_only=args.sweep_thresholds) for name in names}
    torch.set_num_threads(1)
    print("Command: `" + shlex.join(["python", "bench/bench_aks.py", *sys.argv[1:]]) + "`\n")
    started = time.perf_counter()
    for name, config in configs.items():
        if args.sweep_thresholds:
            sweep(name, config, args.items, args.budgets)
        else:
            report(name, config, args.items, args.budgets, args.match_threshold)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
