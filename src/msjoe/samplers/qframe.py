"""Q-Frame (ICCV 2025): sample K frames without replacement from a temperature softmax over CLIP logits.

``pi = softmax(s / tau)`` with ``s`` the CLIP logits (cosine × the encoder's logit scale); the K frames are the
top-K of ``log pi + Gumbel noise`` (the Gumbel-max trick, i.e. K draws without replacement from ``pi``).
"""

from __future__ import annotations

import torch

from msjoe.samplers import register_sampler
from msjoe.samplers.base import Sampler, all_frames, check_similarity
from msjoe.samplers.selection import gumbel_topk

CLIP_LOGIT_SCALE = 100.0


@register_sampler("qframe")
class QFrameSampler(Sampler):
    """Gumbel top-K over ``softmax(logit_scale * cos / tau)`` of the max-over-queries similarity.

    Args:
        tau: Softmax temperature over CLIP logits (paper: 0.8). Smaller is greedier (``tau -> 0`` is top-K),
            larger is closer to a uniformly random K-subset.
        logit_scale: Multiplier turning cosine similarities into CLIP logits. 100 is CLIP's
            ``logit_scale.exp()``; pass the encoder's own value (the pipeline does). On raw cosines (scale 1)
            ``tau = 0.8`` makes ``pi`` nearly uniform, which is not the paper's method.
        seed: Seed of the noise when ``select`` gets no ``generator``, so inference is reproducible by default:
            the same S and K always give the same frames. Pass a ``generator`` for fresh draws (training, or
            several samples of one video).

    The draw runs on the generator's device (so a CPU generator works with S on any device); the indices come
    back on S's device. A constant similarity gives a uniformly random K-subset.
    """

    def __init__(self, tau: float = 0.8, logit_scale: float = CLIP_LOGIT_SCALE, seed: int = 0) -> None:
        if not tau > 0:
            raise ValueError(f"Q-Frame temperature tau must be > 0, got {tau!r}")
        if not logit_scale > 0:
            raise ValueError(f"Q-Frame logit_scale must be > 0, got {logit_scale!r}")
        self.tau = float(tau)
        self.logit_scale = float(logit_scale)
        self.seed = int(seed)

    def logits(self, sim: torch.Tensor) -> torch.Tensor:
        """``log pi`` up to a constant: ``logit_scale * max_j S[j] / tau`` in float64 (the constant
        ``logsumexp`` does not change the Gumbel top-K)."""
        return sim.max(dim=0).values.double() * (self.logit_scale / self.tau)

    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        sim = check_similarity(sim, k)
        num_frames = sim.shape[1]
        if k >= num_frames:
            return all_frames(num_frames, sim.device)
        if generator is None:
            generator = torch.Generator(device=sim.device).manual_seed(self.seed)
        logits = self.logits(sim).to(generator.device)
        drawn = gumbel_topk(logits, k, generator=generator)
        return torch.sort(drawn).values.to(sim.device)

    def probabilities(self, sim: torch.Tensor) -> torch.Tensor:
        """``pi = softmax(logit_scale * max_j S[j] / tau)``, the distribution K frames are drawn from (CPU)."""
        return torch.softmax(self.logits(check_similarity(sim, 1)), dim=-1).cpu()

    def __repr__(self) -> str:
        return f"QFrameSampler(tau={self.tau}, logit_scale={self.logit_scale}, seed={self.seed})"
