"""Evidence recall: how often a sampler's key frames fall on the moments that answer the question.

For an item with evidence spans (LVBench's ``time_reference``, needle items of ``msjoe data needle``...), its
recall is the fraction of its spans that hold at least one chosen frame (a span ``[start, end]`` holds a frame
shown at ``t`` when ``start <= t <= end``). A run's evidence recall is the mean over its items that have spans and
a prediction record with chosen frames (failed items, which chose none, count as 0). Items without spans do not
count; a run over a dataset without spans has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from msjoe.data.schema import QAItem

__all__ = ["evidence_recall", "item_recall"]

# Chosen times are stored rounded to the microsecond (msjoe.video.round_seconds): the same slack at span edges.
_EDGE_S = 1e-6


def item_recall(spans: Sequence[tuple[float, float]], chosen: Sequence[float]) -> float:
    """The fraction of ``spans`` that hold at least one of the ``chosen`` times (seconds)."""
    if not spans:
        raise ValueError("an item without evidence spans has no recall")
    hit = sum(any(start - _EDGE_S <= t <= end + _EDGE_S for t in chosen) for start, end in spans)
    return hit / len(spans)


def evidence_recall(items: Sequence[QAItem], records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """``{"value": mean recall, "items": how many counted}`` over ``items`` with spans and a record in
    ``records`` (id -> prediction record with ``chosen_timestamps``); ``None`` when no item counts."""
    recalls = [
        item_recall(item.evidence, records[item.id].get("chosen_timestamps") or [])
        for item in items
        if item.evidence and item.id in records
    ]
    if not recalls:
        return None
    return {"value": sum(recalls) / len(recalls), "items": len(recalls)}
