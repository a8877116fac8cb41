"""Scoring selectors on simulator items, and paired comparisons between them.

Every selector sees the same items, so differences are *paired*: the standard error of a difference is that of the
per-item differences, far smaller than the two means' own errors when the selectors agree on most items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from msjoe.samplers.base import Sampler, check_similarity
from msjoe.sim.protocol import SimItem, evidence_recall, p_correct

Selector = Sampler | Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True, eq=False)
class ItemScores:
    """Per-item metrics of one selector at one budget, in item order."""

    recall: np.ndarray
    """Evidence recall (:func:`msjoe.sim.protocol.evidence_recall`)."""
    accuracy: np.ndarray
    """The answerer's probability of a correct answer from the chosen frames."""

    @property
    def mean_recall(self) -> float:
        return float(self.recall.mean())

    @property
    def mean_accuracy(self) -> float:
        return float(self.accuracy.mean())


def score(selector: Selector, items: Sequence[SimItem], k: int) -> ItemScores:
    """Run ``selector`` on every item at budget ``k``; a selector returning the wrong number of frames is an error."""
    select = selector.select if isinstance(selector, Sampler) else selector
    recall, accuracy = [], []
    for item in items:
        check_similarity(item.sim, k)
        chosen = select(item.sim, k)
        if chosen.numel() != min(k, item.sim.shape[1]) or chosen.unique().numel() != chosen.numel():
            raise ValueError(f"{selector!r} returned {chosen.tolist()} for k={k}, T={item.sim.shape[1]}")
        chosen = torch.sort(chosen.cpu()).values
        recall.append(evidence_recall(item, chosen))
        accuracy.append(p_correct(item, chosen))
    return ItemScores(np.asarray(recall), np.asarray(accuracy))


def compare(
    selectors: Mapping[str, Selector], items: Sequence[SimItem], ks: Sequence[int]
) -> dict[str, dict[int, ItemScores]]:
    """``{name: {k: scores}}`` for every selector and budget, all on the same items."""
    return {name: {k: score(selector, items, k) for k in ks} for name, selector in selectors.items()}


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` over items and its standard error."""
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired arrays must have the same non-empty shape, got {a.shape} and {b.shape}")
    difference = a - b
    stderr = float(difference.std(ddof=1) / math.sqrt(difference.size)) if difference.size > 1 else 0.0
    return float(difference.mean()), stderr
