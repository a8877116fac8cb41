"""The sampler interface: a similarity matrix S [Nq, T] and a budget K in, K sorted frame indices out.

Every key-frame selector (the baselines and the U-Sampler) implements :class:`Sampler`. Selection is over
candidate *indices*; the caller maps them to timestamps.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch

from msjoe.checks import is_int
from msjoe.limits import MAX_QUERIES
from msjoe.samplers.unet1d import row_zscores

RowScale = Literal["raw", "zscore"]


class Sampler(ABC):
    """Chooses ``k`` of ``T`` candidate frames from query-frame similarities.

    Subclasses set ``name`` and implement :meth:`select`. ``needs_queries = False`` marks samplers that ignore
    the values of S (uniform) so the pipeline can skip query generation for them.
    """

    name: ClassVar[str]
    needs_queries: ClassVar[bool] = True

    @abstractmethod
    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``min(k, T)`` distinct candidate indices, sorted by time, as a 1-D ``torch.long`` tensor.

        ``sim`` is validated with :func:`check_similarity`. ``generator`` seeds stochastic samplers;
        deterministic samplers ignore it.
        """

    def probabilities(self, sim: torch.Tensor) -> torch.Tensor | None:
        """The distribution ``[T]`` over candidates that :meth:`select` draws from or inverts, for samplers that
        have one (BOLT, Q-Frame, the U-Sampler); None for rules without one (uniform, top-k, AKS, bin-max).

        Shown by the explain view next to the similarity curves: it is what the sampler made of S.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_similarity(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Validate a similarity matrix and budget; return S as a float32 ``[Nq, T]`` tensor on its device.

    Raises ``ValueError`` with a specific message for: wrong rank, no candidates, more than
    :data:`MAX_QUERIES` or zero query rows, NaN or infinite entries, and a non-positive budget.
    """
    if not isinstance(sim, torch.Tensor):
        sim = torch.as_tensor(sim)
    if sim.ndim == 1:
        sim = sim.unsqueeze(0)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must have shape [num_queries, num_frames], got {tuple(sim.shape)}")
    num_queries, num_frames = sim.shape
    if num_frames == 0:
        raise ValueError("similarity matrix has no candidate frames (T = 0)")
    if not 1 <= num_queries <= MAX_QUERIES:
        raise ValueError(f"similarity matrix must have 1 to {MAX_QUERIES} query rows, got {num_queries}")
    if not torch.isfinite(sim).all():
        bad = (~torch.isfinite(sim)).nonzero()[0].tolist()
        raise ValueError(f"similarity matrix holds NaN or infinite values (first at query {bad[0]}, frame {bad[1]})")
    if not is_int(k, numbers.Integral) or k < 1:
        raise ValueError(f"frame budget k must be a positive integer, got {k!r}")
    return sim.float()


def all_frames(num_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The answer when the budget covers every candidate: all indices in time order."""
    return torch.arange(num_frames, dtype=torch.long, device=device)


def frame_scores(sim: torch.Tensor, rows: RowScale = "raw") -> torch.Tensor:
    """One score per candidate ``[T]``: the max over query rows of ``sim [Nq, T]``.

    ``rows="raw"`` reads the cosines as they are (TSPO's bin-max, top-k). ``rows="zscore"`` first standardises
    each row over the video (:func:`~msjoe.samplers.unet1d.row_zscores`, the U-Sampler's prior), so a query whose
    cosines sit in a higher band does not win every frame just by its offset.
    """
    if rows == "raw":
        return sim.max(dim=0).values
    if rows == "zscore":
        return row_zscores(sim).max(dim=0).values
    raise ValueError(f"rows must be 'raw' or 'zscore', got {rows!r}")


class RowScoredSampler(Sampler):
    """A rule over one score per candidate, the max over query rows (:func:`frame_scores`): bin-max, top-k.

    Args:
        rows: ``"raw"`` takes the max of the cosines; ``"zscore"`` standardises each query row first (see
            :func:`frame_scores`).
    """

    def __init__(self, rows: RowScale = "raw") -> None:
        frame_scores(torch.zeros(1, 1), rows)  # refuses an unknown value now, not at the first question
        self.rows: RowScale = rows

    def scores(self, sim: torch.Tensor) -> torch.Tensor:
        """The per-candidate scores ``[T]`` this rule ranks."""
        return frame_scores(sim, self.rows)
