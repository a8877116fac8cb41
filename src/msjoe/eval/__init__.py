"""Evaluation: official answer extraction and accuracy tables (:mod:`msjoe.eval.scoring`)."""

from msjoe.eval.scoring import (
    EXTRACTORS,
    ScoredItem,
    ScoringPolicy,
    Tally,
    read_predictions,
    resolve_extractor,
    score_items,
)

__all__ = [
    "EXTRACTORS",
    "ScoredItem",
    "ScoringPolicy",
    "Tally",
    "read_predictions",
    "resolve_extractor",
    "score_items",
]
