"""The U-Sampler network: query-frame similarities ``S [Nq, T]`` in, one logit per frame out.

Two stages, both convolving along time only:

1. **Query encoder** (ours). Each query row is turned into a few scale-free per-frame features (see
   :data:`FEATURES`), passed through a small pointwise MLP *shared by all queries*, then pooled across the valid
   queries with a mean and a max. The result does not depend on the order of the queries, accepts 1 to 4 rows
   without inventing padding queries, and the max keeps "any query matches" while the mean keeps "all match".
2. **1D U-Net** (paper: "lightweight 1D U-Net", about 2M parameters). Pre-norm residual conv blocks at each level,
   strided convolutions down, strided transposed convolutions up, concatenated skips. Channel widths grow with
   depth so that most parameters sit at coarse resolution where they are cheap; the full-resolution level stays
   thin. A global-context layer at the bottleneck lets every frame see summary statistics of the whole video
   whatever T is.

**Every linear map on the path from the query encoder to the head reads a normalised input** (ours, measured):
each residual block is ``shortcut(x) + conv(silu(norm(conv(silu(norm(x))))))`` with a small-initialised last
convolution, every down- and up-sampling convolution and the global-context projection read ``norm(x)``, and the
head reads a per-frame RMS-normalised tensor. Without this, the chain of unnormalised linear maps between the
bottleneck and the head (down convolutions, context projection, transposed convolutions, 1x1 shortcuts: about
ten in a row) lets Adam grow the activation scale geometrically: stage-1 REINFORCE diverged within 150-450 steps
at learning rates of 1e-3 to 2e-3, the logits reaching 1e15 with all the probability mass on one phase of the
stride-4 grid (bench/diag_stage1_stability.py measures it). Pre-norm blocks and a normalised head input alone,
with unnormalised down/up-sampling and context, hide the growth from the logits but not from the network: that
path reached 1e7 in 400 steps at 2e-3 while the residual branches stayed near 1, so the blocks could no longer
change anything (the "stable but not learning" regime). With every input normalised, the activations stay O(1)
(they can only grow additively, with the weights) and the logits are bounded by the head's and the prior gain's
weights.

Any length works, T = 1 included, without padding T to a multiple of the total stride: a level whose length is
not a multiple of the stride is zero-padded at its end before the strided convolution, and the upsampled tensor is
cropped back to the skip's length. This is exactly what zero-padding the input and masking would compute, so
batches of items with different T (right-padded, with ``frame_mask``) give, for each item, the same logits as
running it alone: padded positions are kept at zero before every convolution, excluded from every statistic
(GroupNorm, z-scores, ranks, global context), and their logits are ``-inf`` so they can never be drawn or selected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FEATURES: dict[str, str] = {
    "cosine": "the raw cosine similarity",
    "zscore": "the row standardised over the video's frames, clipped to +-8 (CLIP cosines live in a narrow band)",
    "percentile": "the frame's mid-rank within the row, mapped to (-1, 1); invariant to any monotone rescaling",
    "minmax": "the row min-max normalised to [0, 1] (BOLT's normalisation)",
}
"""Per-query, per-frame input features the query encoder can use, by name."""

# A row whose spread is below this is treated as flat rather than having its noise amplified into signal; real
# CLIP rows spread over ~0.02-0.05 of cosine.
_ROW_STD_FLOOR = 1e-3
_ZSCORE_CLIP = 8.0
# Initial scale of the last layer of each residual branch and of the context projection, relative to PyTorch's
# default initialisation.
_SMALL_INIT = 0.1


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm whose statistics ignore padded positions (``mask == 0``); plain GroupNorm when ``mask`` is None."""
    if mask is None:
        # torch.group_norm, not F.group_norm: the latter refuses one value per channel in training mode (T = 1),
        # which is well defined here because each group spans several channels.
        return torch.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    batch, channels, length = x.shape
    groups = norm.num_groups
    grouped = x.reshape(batch, groups, channels // groups, length)
    weight = mask.unsqueeze(1)  # [B, 1, 1, L]
    count = weight.sum(dim=(2, 3), keepdim=True).clamp_min(1) * (channels // groups)
    mean = (grouped * weight).sum(dim=(2, 3), keepdim=True) / count
    var = (((grouped - mean) * weight) ** 2).sum(dim=(2, 3), keepdim=True) / count
    normed = ((grouped - mean) * torch.rsqrt(var + norm.eps)).reshape(batch, channels, length)
    return normed * norm.weight[:, None] + norm.bias[:, None]


def _apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class Pointwise(nn.Module):
    """A 1x1 convolution over ``[B, C, T]`` computed as a matrix product.

    Same maths and parameter count as ``nn.Conv1d(in, out, 1)``, but on CPU with more than one thread PyTorch
    routes 1x1 convolutions through oneDNN, which is 2-15x slower than ``matmul`` at these sizes (measured with
    bench/bench_usampler.py's shapes).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # nn.Conv1d's default initialisation (kaiming-uniform with a = sqrt(5), uniform bias within 1/sqrt(fan_in)).
        bound = 1 / math.sqrt(in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(self.weight, x)
        return out if self.bias is None else out + self.bias[:, None]


def group_norm_layer(channels: int, group_size: int) -> nn.GroupNorm:
    """GroupNorm over groups of ``group_size`` channels (fewer when ``channels`` is not a multiple of it).

    Groups of a fixed number of channels (not a fixed number of groups): a one-channel group at a level of length 1
    would normalise a single value to zero and erase it.
    """
    return nn.GroupNorm(channels // math.gcd(channels, group_size), channels)


class ResidualConvBlock(nn.Module):
    """Pre-norm residual block: ``shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))``.

    The shortcut is the identity, or a 1x1 projection when the width changes. ``conv2`` starts at a tenth of its
    default scale, so each block starts close to its shortcut (a well-conditioned start for a stack of blocks) while
    every parameter still gets gradient from the first step.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_group_size: int) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.norm1 = group_norm_layer(in_channels, norm_group_size)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = group_norm_layer(out_channels, norm_group_size)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding)
        with torch.no_grad():
            self.conv2.weight.mul_(_SMALL_INIT)
            self.conv2.bias.mul_(_SMALL_INIT)
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else Pointwise(in_channels, out_channels, bias=False)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # Masked before each convolution: GroupNorm's bias and SiLU make padded positions non-zero.
        h = self.conv1(_apply_mask(F.silu(masked_group_norm(x, self.norm1, mask)), mask))
        h = self.conv2(_apply_mask(F.silu(masked_group_norm(h, self.norm2, mask)), mask))
        return _apply_mask(self.shortcut(x) + h, mask)


class GlobalContext(nn.Module):
    """Adds a projection of the (masked) mean and max over time of ``norm(x)`` to every position.

    Whole-video context at any T. The projection reads normalised statistics (the max over thousands of positions
    of an unnormalised tensor is what grew fastest in the diverging runs) and starts small, like a block's last
    convolution.
    """

    def __init__(self, channels: int, norm_group_size: int) -> None:
        super().__init__()
        self.norm = group_norm_layer(channels, norm_group_size)
        self.proj = nn.Linear(2 * channels, channels)
        with torch.no_grad():
            self.proj.weight.mul_(_SMALL_INIT)
            self.proj.bias.mul_(_SMALL_INIT)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        normed = masked_group_norm(x, self.norm, mask)
        if mask is None:
            mean, peak = normed.mean(dim=-1), normed.amax(dim=-1)
        else:
            mean = (normed * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)
            peak = normed.masked_fill(mask == 0, float("-inf")).amax(dim=-1)
        return _apply_mask(x + self.proj(torch.cat([mean, peak], dim=-1)).unsqueeze(-1), mask)


class FrameRMSNorm(nn.Module):
    """Scales each frame's channel vector to unit RMS, then by a learned per-channel gain (RMSNorm over channels).

    Used before the head: per frame, so it needs no mask and no statistic over time. A GroupNorm over time there
    would rescale a sparse feature (a bump on a few frames of a long video) by about ``sqrt(T / bump length)``, and
    it would force the head's output to the same spread over time for every item, even one with nothing to prefer.
    Here the head's output is bounded by ``||head|| * max|gain| * sqrt(channels)`` and can be flat.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps) * self.weight[:, None]


class Downsample(nn.Module):
    """``conv(norm(x))`` with kernel and stride ``stride``: one coarse position per ``stride`` inputs.

    A length that is not a multiple of ``stride`` is zero-padded at its end first (what padding the input would do).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_group_size: int) -> None:
        super().__init__()
        self.stride = stride
        self.norm = group_norm_layer(in_channels, norm_group_size)
        self.conv = nn.Conv1d(in_channels, out_channels, stride, stride=stride)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The coarse tensor and its mask (a coarse position is valid if any of its inputs was)."""
        x = self.conv(_pad_to_multiple(_apply_mask(masked_group_norm(x, self.norm, mask), mask), self.stride))
        if mask is not None:
            mask = F.max_pool1d(_pad_to_multiple(mask, self.stride), self.stride)
        return _apply_mask(x, mask), mask


class Upsample(nn.Module):
    """``conv_transpose(norm(x))`` with kernel and stride ``stride``, cropped to the finer level's length."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_group_size: int) -> None:
        super().__init__()
        self.norm = group_norm_layer(in_channels, norm_group_size)
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, stride, stride=stride)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, length: int, fine_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.conv(_apply_mask(masked_group_norm(x, self.norm, mask), mask))
        return _apply_mask(x[..., :length], fine_mask)


def _pad_to_multiple(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Right zero-padding of the time axis to a multiple of ``factor`` (nothing to do in the common case)."""
    extra = -x.shape[-1] % factor
    return F.pad(x, (0, extra)) if extra else x


def query_features(
    sim: torch.Tensor, names: Sequence[str], frame_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query, per-frame input features.

    ``sim`` is ``[B, Nq, T]``; ``frame_mask`` (bool ``[B, T]`` or None for all valid) excludes padded frames from
    every row statistic. Returns the features ``[B, Nq, F, T]`` in the order of ``names`` (see :data:`FEATURES`),
    zero at padded frames, and the z-score ``[B, Nq, T]`` (used by the similarity prior whatever ``names`` holds).
    """
    if frame_mask is not None:
        sim = sim * frame_mask[:, None, :]
    zscore, count = _row_zscores(sim, frame_mask)
    columns = []
    for name in names:
        if name == "cosine":
            columns.append(sim)
        elif name == "zscore":
            columns.append(zscore)
        elif name == "percentile":
            columns.append(_percentile(sim, frame_mask, count))
        elif name == "minmax":
            columns.append(_minmax(sim, frame_mask))
        else:
            raise ValueError(f"unknown feature {name!r}; choose from {sorted(FEATURES)}")
    features = torch.stack(columns, dim=2)
    if frame_mask is not None:
        features = features * frame_mask[:, None, None, :]
    return features, zscore


def row_zscores(sim: torch.Tensor) -> torch.Tensor:
    """Each row of ``sim`` (``[..., T]``) standardised over its frames, clipped to +-8: the U-Sampler's z-score.

    CLIP cosines of different queries live in different narrow bands; standardising each row puts them on one
    scale before they are compared or combined (the baselines' ``rows="zscore"`` option reads S through this).
    """
    return _row_zscores(sim, None)[0]


def _row_zscores(sim: torch.Tensor, frame_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The z-score of :func:`row_zscores` over the valid frames of ``[B, Nq, T]`` rows (padded frames zeroed by the
    caller), and the number of valid frames per row ``[B, Nq, 1]``."""
    if frame_mask is None:
        count = torch.full((*sim.shape[:-1], 1), float(sim.shape[-1]), device=sim.device)
        mean = sim.mean(dim=-1, keepdim=True)
        var = (sim - mean).square().mean(dim=-1, keepdim=True)
    else:
        valid = frame_mask[:, None, :]
        count = valid.sum(dim=-1, keepdim=True).float()
        mean = sim.sum(dim=-1, keepdim=True) / count
        var = ((sim - mean).square() * valid).sum(dim=-1, keepdim=True) / count
    zscore = ((sim - mean) / (var.sqrt() + _ROW_STD_FLOOR)).clamp(-_ZSCORE_CLIP, _ZSCORE_CLIP)
    return zscore, count


def _percentile(sim: torch.Tensor, frame_mask: torch.Tensor | None, count: torch.Tensor) -> torch.Tensor:
    """Mid-rank of each frame in its row, ``(number below + number at or below) / count - 1``, in (-1, 1).

    Ties share their average rank, so a flat row maps to 0 everywhere rather than to a ramp that would leak frame
    position into the features. One sort plus running max/min of run boundaries (3x cheaper than two searchsorted).
    """
    keys = sim if frame_mask is None else sim.masked_fill(~frame_mask[:, None, :], float("inf"))
    ordered, order = torch.sort(keys, dim=-1)
    num_frames = keys.shape[-1]
    position = torch.arange(num_frames, device=keys.device).expand_as(ordered)
    starts_run = torch.ones_like(ordered, dtype=torch.bool)
    starts_run[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends_run = torch.ones_like(starts_run)
    ends_run[..., :-1] = starts_run[..., 1:]
    below = torch.where(starts_run, position, 0).cummax(dim=-1).values  # first index of the run of equal values
    at_or_below = torch.where(ends_run, position + 1, num_frames).flip(-1).cummin(dim=-1).values.flip(-1)
    ranks = torch.empty_like(below).scatter_(-1, order, below + at_or_below)
    return ranks.float() / count - 1.0


def _minmax(sim: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    if frame_mask is None:
        low, high = sim.amin(dim=-1, keepdim=True), sim.amax(dim=-1, keepdim=True)
    else:
        valid = frame_mask[:, None, :]
        low = sim.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
        high = sim.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
    return (sim - low) / (high - low).clamp_min(_ROW_STD_FLOOR)


class QueryEncoder(nn.Module):
    """A pointwise MLP shared by all queries, then mean and max over the valid queries: ``[B, 2 * width, T]``.

    Sharing the weights and pooling with symmetric functions makes the output independent of query order and
    defined for any number of queries, with no padding queries invented.
    """

    def __init__(self, num_features: int, width: int) -> None:
        super().__init__()
        # Pointwise on [B * Nq, F, T]: channels-first all the way, no transposes before the U-Net.
        self.mlp = nn.Sequential(Pointwise(num_features, width), nn.SiLU(), Pointwise(width, width))

    def forward(self, features: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
        batch, num_queries = features.shape[:2]
        encoded = self.mlp(features.flatten(0, 1)).unflatten(0, (batch, num_queries))  # [B, Nq, width, T]
        if query_mask is None:
            return torch.cat([encoded.mean(dim=1), encoded.amax(dim=1)], dim=1)
        valid = query_mask[:, :, None, None]
        mean = (encoded * valid).sum(dim=1) / valid.sum(dim=1)
        peak = encoded.masked_fill(~valid, float("-inf")).amax(dim=1)
        return torch.cat([mean, peak], dim=1)


class UNet1D(nn.Module):
    """Maps similarities ``S`` to per-frame logits.

    ``forward(sim, query_mask=None, frame_mask=None)``:

    - ``sim``: ``[Nq, T]`` (one item) or ``[B, Nq, T]`` (a batch; items shorter than T right-padded, items with
      fewer queries padded with rows that ``query_mask`` marks invalid; padded values are ignored).
    - ``query_mask``: optional bool ``[Nq]`` / ``[B, Nq]``, True for real queries; each item needs at least one.
    - ``frame_mask``: optional bool ``[T]`` / ``[B, T]``, True for real frames; each item needs at least one.
    - returns float32 logits ``[T]`` / ``[B, T]``; padded frames get ``-inf``. Each item's logits equal (up to
      float rounding) those of the item run alone.

    Constructor arguments are documented on :class:`msjoe.samplers.usampler.USamplerConfig`, which holds the
    defaults; this class takes them explicitly so that the two never drift apart.
    """

    def __init__(
        self,
        *,
        features: Sequence[str],
        query_width: int,
        widths: Sequence[int],
        kernel_size: int,
        level_stride: int,
        norm_group_size: int,
        global_context: bool,
        similarity_prior: bool,
    ) -> None:
        super().__init__()
        unknown = [name for name in features if name not in FEATURES]
        if unknown or not features:
            raise ValueError(f"features must be a non-empty subset of {sorted(FEATURES)}, got {list(features)}")
        if not widths or any(w < 1 or w % norm_group_size for w in widths):
            raise ValueError(f"widths must be positive multiples of norm_group_size={norm_group_size}: {list(widths)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number (centred 'same' padding), got {kernel_size}")
        if level_stride < 2:
            raise ValueError(f"level_stride must be >= 2, got {level_stride}")
        self.features = tuple(features)
        self.level_stride = level_stride
        self.query_encoder = QueryEncoder(len(self.features), query_width)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            # Level 0 widens the pooled query features; deeper levels receive the downsampler's output width.
            in_channels = 2 * query_width if level == 0 else width
            self.encoder.append(ResidualConvBlock(in_channels, width, kernel_size, norm_group_size))
            if level + 1 < len(widths):
                self.down.append(Downsample(width, widths[level + 1], level_stride, norm_group_size))
        self.context = GlobalContext(widths[-1], norm_group_size) if global_context else None
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            self.up.append(Upsample(widths[level + 1], widths[level], level_stride, norm_group_size))
            self.decoder.append(ResidualConvBlock(2 * widths[level], widths[level], kernel_size, norm_group_size))
        self.head_norm = FrameRMSNorm(widths[0])
        # No bias: a constant added to every logit leaves the softmax unchanged, so it could never be learned.
        self.head = Pointwise(widths[0], 1, bias=False)
        # Start the head small: the untrained network then only nudges the prior (or uniform) distribution, while
        # every parameter still receives gradient from the first step (a zero head would block that).
        nn.init.normal_(self.head.weight, std=0.01)
        # Ours: a learned gain on the max-over-queries z-score added to the logits, so the untrained sampler already
        # prefers frames that look like a query (a top-k-like prior) and the U-Net learns a correction to it.
        self.prior_gain = nn.Parameter(torch.tensor(1.0)) if similarity_prior else None

    @property
    def stride(self) -> int:
        """Total downsampling factor between the input and the bottleneck."""
        return self.level_stride ** len(self.down)

    def forward(
        self,
        sim: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        single = sim.ndim == 2
        if single:
            sim = sim.unsqueeze(0)
            query_mask = None if query_mask is None else query_mask.unsqueeze(0)
            frame_mask = None if frame_mask is None else frame_mask.unsqueeze(0)
        if sim.ndim != 3:
            raise ValueError(f"sim must have shape [Nq, T] or [B, Nq, T], got {tuple(sim.shape)}")
        batch, num_queries, num_frames = sim.shape
        qmask = _check_mask(query_mask, (batch, num_queries), "query_mask")
        fmask = _check_mask(frame_mask, (batch, num_frames), "frame_mask")
        # A float mask [B, 1, T] multiplies activations; None means "all valid" and takes the cheaper paths.
        mask = None if fmask is None else fmask[:, None, :].float()

        features, zscore = query_features(sim.float(), self.features, fmask)
        x = _apply_mask(self.query_encoder(features, qmask), mask)

        skips: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for level, block in enumerate(self.encoder):
            x = block(x, mask)
            if level < len(self.down):
                skips.append((x, mask))
                x, mask = self.down[level](x, mask)
        if self.context is not None:
            x = self.context(x, mask)
        for up, block in zip(self.up, self.decoder, strict=True):
            skip, skip_mask = skips.pop()
            x = up(x, mask, skip.shape[-1], skip_mask)
            mask = skip_mask
            x = block(torch.cat([x, skip], dim=1), mask)

        logits = self.head(self.head_norm(x)).squeeze(1)  # [B, T]
        if self.prior_gain is not None:
            if qmask is not None:
                zscore = zscore.masked_fill(~qmask[:, :, None], float("-inf"))
            logits = logits + self.prior_gain * zscore.amax(dim=1)
        if fmask is not None:
            logits = logits.masked_fill(~fmask, float("-inf"))
        return logits.squeeze(0) if single else logits


def _check_mask(mask: torch.Tensor | None, shape: tuple[int, int], name: str) -> torch.Tensor | None:
    """A bool mask of ``shape``, or None when absent or all True (so callers can skip the masking work)."""
    if mask is None:
        return None
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} to match sim, got {list(mask.shape)}")
    mask = mask.to(torch.bool)
    if not mask.any(dim=1).all():
        raise ValueError(f"{name} leaves an item with nothing valid; every item needs at least one")
    return None if mask.all() else mask


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
