"""``msjoe data split``: a train/validation split by video, so no video (and no footage) is in both.

Items are grouped by the videos they show: their own video and, for needle items (:mod:`msjoe.data.needle`),
every source video their clips were cut from (``meta["needle"]["sources"]``), so a needle built from video V
and V's own questions always land on the same side. Groups joined by a shared video are merged (union-find).
Whole groups then go to validation in a seeded random order until it holds ``val_fraction`` of the videos
(at least one group when ``val_fraction > 0``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msjoe.data.schema import QAItem

__all__ = ["Split", "footage", "split_by_video"]


@dataclass
class Split:
    """The two sides; items keep their input order within each."""

    train: list[QAItem]
    val: list[QAItem]
    train_videos: int
    val_videos: int


def footage(item: QAItem) -> list[str]:
    """The video files ``item`` shows: its own, and the sources of a needle item's clips (absolute paths)."""
    videos = [item.video_key]
    needle = item.meta.get("needle")
    if isinstance(needle, dict):
        for source in needle.get("sources", []):
            if isinstance(source, str):
                videos.append(str(Path(source).expanduser().resolve()))
    return videos


def split_by_video(items: Sequence[QAItem], *, val_fraction: float, seed: int = 0) -> Split:
    """Split ``items`` so that no video is on both sides (see the module notes)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    parent: dict[str, str] = {}

    def find(video: str) -> str:
        while parent.setdefault(video, video) != video:
            parent[video] = parent[parent[video]]
            video = parent[video]
        return video

    for item in items:
        first, *others = footage(item)
        find(first)
        for other in others:
            parent[find(other)] = find(first)
    groups: dict[str, set[str]] = {}
    for video in list(parent):
        groups.setdefault(find(video), set()).add(video)
    order = sorted(groups)  # input-independent order, then a seeded shuffle
    random.Random(seed).shuffle(order)
    total = len(parent)
    wanted = math.ceil(val_fraction * total) if val_fraction > 0 else 0
    val_roots: set[str] = set()
    val_videos = 0
    for root in order:
        if val_videos >= wanted:
            break
        val_roots.add(root)
        val_videos += len(groups[root])
    val = [item for item in items if find(item.video_key) in val_roots]
    train = [item for item in items if find(item.video_key) not in val_roots]
    return Split(train, val, total - val_videos, val_videos)
