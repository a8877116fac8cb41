"""The U-Sampler: a learned key-frame selector (MSJoE's "lightweight 1D U-Net", about 2M parameters).

``S [Nq, T]`` → :class:`~msjoe.samplers.unet1d.UNet1D` → one logit per frame → a policy over K-frame selections
(:mod:`msjoe.samplers.policy`): K sequential categorical draws from ``softmax(logits / temperature)``, each over
the frames not within ``floor(suppression · T / K)`` candidates of an earlier pick.

- Training samples the policy (:meth:`USampler.sample`) and scores draws with its exact log-probability
  (:meth:`USampler.log_prob`; the paper's ``sum_k log p(x_k)`` is kept as ``estimator="independent"``).
- Inference (:meth:`USampler.select`) reads the same policy greedily by default (``inference_rule="policy"``:
  the most probable frame at each step, same suppression). ``"nms"`` (top-K with a fixed suppression radius, the
  rule of format-2 checkpoints saved before the policy), ``"topk"`` and ``"quantile"`` (BOLT's inverse-CDF rule)
  remain selectable. docs/decisions.md ("One policy") records why.

Checkpoints are folders: ``model.safetensors`` + ``config.json`` (format name and version, the
:class:`USamplerConfig`, and the number of training steps), written by :meth:`USampler.save_pretrained` and read by
:meth:`USampler.from_pretrained` or ``USampler(checkpoint=folder)``.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from msjoe.atomic import umask_file_mode
from msjoe.checks import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bounds, check_fields, is_int
from msjoe.errors import ModelLoadError
from msjoe.samplers import policy, register_sampler
from msjoe.samplers.base import Sampler, all_frames, check_similarity
from msjoe.samplers.selection import (
    ESTIMATORS,
    Estimator,
    default_nms_radius,
    independent_log_prob,
    quantile_indices,
    topk_indices,
    topk_nms,
)
from msjoe.samplers.unet1d import FEATURES, UNet1D, count_parameters

logger = logging.getLogger(__name__)

InferenceRule = Literal["policy", "nms", "topk", "quantile"]
INFERENCE_RULES: tuple[str, ...] = typing.get_args(InferenceRule)

CHECKPOINT_FORMAT = "msjoe-usampler"
# 2: every linear map of the U-Net reads a normalised input (see msjoe.samplers.unet1d); version-1 weights (the
# earlier network, which diverged in stage-1 training) do not fit it.
CHECKPOINT_FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Fields that change how logits are turned into frames but not the network: safe to override on a checkpoint.
_INFERENCE_FIELDS = ("inference_rule", "nms_radius", "temperature")


@dataclass
class USamplerConfig:
    """Architecture and inference settings of the U-Sampler; saved as ``config.json`` next to the weights.

    The default network has about 2.0M parameters (paper: "about 2M"); most sit in the coarse levels, so a forward
    pass over T = 3,600 candidates costs a few milliseconds on a laptop CPU.
    """

    features: tuple[str, ...] = ("cosine", "zscore")
    """Per-query, per-frame inputs to the shared query encoder; names from :data:`msjoe.samplers.unet1d.FEATURES`.
    The z-score matters because CLIP cosines live in a narrow band that shifts between encoders and queries; the raw
    cosine keeps the absolute level ("does this match at all"). ``"percentile"`` (rank-based, robust to any
    monotone rescaling) is available but off by default: it needs a sort per row, which torch's CPU sort makes
    the costliest op of the forward pass beyond a few thousand frames, and on unimodal rows it adds little to z."""
    query_width: Annotated[int, AT_LEAST_1] = 8
    """Channels of the pointwise query encoder; pooling (mean and max over queries) doubles them."""
    widths: tuple[int, ...] = (16, 32, 64, 144, 272)
    """Channels per U-Net level, finest first; each further level divides the time resolution by ``level_stride``.
    Keep the first entries small (they run at full T) and put capacity in the last ones (they run at T / 256)."""
    kernel_size: Annotated[int, AT_LEAST_1] = 5
    """Temporal kernel of the convolutions in every residual block (odd)."""
    level_stride: Annotated[int, Bounds(2)] = 4
    """Down/up-sampling factor between levels. 4 rather than the classic 2: half the levels, hence half the
    (overhead-bound) convolution calls for the same reach, which is what makes CPU inference fast; with 5 levels
    one bottleneck position covers 256 candidates (about 4 minutes at 1 fps)."""
    norm_group_size: Annotated[int, AT_LEAST_1] = 8
    """Channels per GroupNorm group; every width must be a multiple. GroupNorm works at batch size 1 and any T."""
    global_context: bool = True
    """Add a projection of the bottleneck's mean and max over time to every position (whole-video context)."""
    similarity_prior: bool = True
    """Add a learned gain (initialised to 1) times the max-over-queries z-score to the logits, so an untrained
    sampler already prefers frames that match a query and the network learns a correction."""
    suppression: Annotated[float, AT_LEAST_0] = policy.DEFAULT_SUPPRESSION
    """Width of the policy's temporal suppression as a fraction of the even spacing ``T / K``: after each pick, the
    ``floor(suppression · T / K)`` candidates on either side are unavailable (:mod:`msjoe.samplers.policy`). Part of
    the policy, used identically in training and inference. Chosen among 0.125, 0.25 and 0.5 on the simulator's
    validation variants (docs/decisions.md, "One policy"); 0 is plain sampling without replacement (Plackett–Luce)."""
    inference_rule: InferenceRule = "policy"
    """Deterministic rule of :meth:`USampler.select`: ``"policy"`` (greedy read of the training policy),
    ``"nms"``, ``"topk"`` or ``"quantile"``."""
    nms_radius: Annotated[int | None, AT_LEAST_0] = 4
    """Suppression radius in candidates for ``"nms"`` only; None uses ``selection.default_nms_radius(T, K)``."""
    temperature: Annotated[float, POSITIVE] = 1.0
    """Logits are divided by this before the softmax (affects sampling, probabilities and ``"quantile"``)."""

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare equal and stay hashable.
        if isinstance(self.features, list):
            self.features = tuple(self.features)
        if isinstance(self.widths, list):
            self.widths = tuple(self.widths)
        check_fields(self)  # every field's type and range, from its annotation
        # What annotations cannot say: names from a table, one field's relation to another, odd numbers.
        unknown = [name for name in self.features if name not in FEATURES]
        if unknown or not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(
                f"features must be distinct names from {sorted(FEATURES)}, got {list(self.features)} "
                f"(unknown: {unknown})"
            )
        if not self.widths:
            raise ValueError("widths must list at least one level")
        if any(w < 1 or w % self.norm_group_size for w in self.widths):
            raise ValueError(
                f"widths must be positive multiples of norm_group_size={self.norm_group_size}: {list(self.widths)}"
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        data = asdict(self)
        data["features"] = list(self.features)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> USamplerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they usually mean a newer or foreign file)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown USamplerConfig fields: {unknown}")
        return cls(**data)

    def build_module(self) -> UNet1D:
        """A freshly initialised network (uses the global torch RNG; see :class:`USampler` for seeding)."""
        return UNet1D(
            features=self.features,
            query_width=self.query_width,
            widths=self.widths,
            kernel_size=self.kernel_size,
            level_stride=self.level_stride,
            norm_group_size=self.norm_group_size,
            global_context=self.global_context,
            similarity_prior=self.similarity_prior,
        )


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value to compare by
class SampledFrames:
    """One training-time draw of ``min(k, T)`` frames without replacement.

    ``log_prob`` (exact Plackett–Luce) and ``log_prob_independent`` (the paper's ``sum_k log p(x_k)``) are scalars
    differentiable in the sampler's parameters; ``logits`` (``[T]``, also differentiable) serve e.g. an entropy bonus.
    """

    order: torch.Tensor
    """Frame indices in draw order (what :meth:`USampler.log_prob` needs to recompute the probability)."""
    indices: torch.Tensor
    """The same frames sorted by time (what the MLLM is shown)."""
    log_prob: torch.Tensor
    log_prob_independent: torch.Tensor
    logits: torch.Tensor = field(repr=False)


@register_sampler("usampler")
class USampler(Sampler):
    """The learned sampler behind the :class:`~msjoe.samplers.base.Sampler` interface.

    ``USampler(checkpoint=folder)`` loads a :meth:`save_pretrained` folder; ``USampler(config=...)`` (or no argument)
    builds a randomly initialised network, seeded by ``seed`` without touching the global RNG — check
    :attr:`is_trained` before using one for answers. ``inference_overrides`` may set ``inference_rule``,
    ``nms_radius`` or ``temperature`` on top of the checkpoint's or given config.

    :meth:`logits`, :meth:`probs`, :meth:`sample` and :meth:`log_prob` are differentiable (training);
    :meth:`select` runs without autograd (inference). All take one item ``S [Nq, T]``; :meth:`logits_batch` scores
    several items of different sizes in one pass (see :class:`~msjoe.samplers.unet1d.UNet1D` for the masks).
    """

    needs_queries: ClassVar[bool] = True

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        config: USamplerConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        **inference_overrides: Any,
    ) -> None:
        bad = sorted(set(inference_overrides) - set(_INFERENCE_FIELDS))
        if bad:
            raise ValueError(f"unknown USampler options {bad}; only {list(_INFERENCE_FIELDS)} can be overridden")
        if checkpoint is not None and config is not None:
            raise ValueError("pass either checkpoint (a saved folder) or config (a fresh network), not both")
        self.device = torch.device(device)
        if checkpoint is not None:
            config, state, self.training_steps = _read_checkpoint(Path(checkpoint))
            self.module = config.build_module()
            _check_state_shapes(self.module, state, Path(checkpoint))
            self.module.load_state_dict(state)
        else:
            config = config or USamplerConfig()
            # fork_rng: seeded, reproducible initialisation that leaves the caller's global RNG untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.module = config.build_module()
            self.training_steps = 0
            logger.info("U-Sampler initialised randomly (seed %d): untrained until fitted or loaded", seed)
        self.config = replace(config, **inference_overrides)
        self.module.to(self.device)

    @property
    def is_trained(self) -> bool:
        """True when the weights come from a checkpoint saved after at least one training step.

        Trainers should set :attr:`training_steps` before :meth:`save_pretrained`.
        """
        return self.training_steps > 0

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of the network."""
        return count_parameters(self.module)

    # --- scores ------------------------------------------------------------------------------------------------
    def logits(self, sim: torch.Tensor) -> torch.Tensor:
        """Per-frame logits ``[T]`` (already divided by the temperature); differentiable."""
        sim = check_similarity(sim, 1).to(self.device)
        return self.module(sim) / self.config.temperature

    def logits_batch(self, sims: Sequence[torch.Tensor], *, module: nn.Module | None = None) -> list[torch.Tensor]:
        """Logits of several items (any T and Nq each) in one forward pass; one ``[T_i]`` tensor per item.

        Items are right-padded to the longest T and the largest Nq and masked, so each result equals
        ``logits(sims[i])`` up to float rounding. Differentiable; use it to score a group of rollouts at once.
        ``module`` runs a wrapper of :attr:`module` instead (a DDP/FSDP-prepared copy: its forward is what
        synchronises gradients across processes).
        """
        if not sims:
            raise ValueError("logits_batch needs at least one similarity matrix")
        checked = [check_similarity(sim, 1).to(self.device) for sim in sims]
        num_queries = max(sim.shape[0] for sim in checked)
        num_frames = max(sim.shape[1] for sim in checked)
        batch = torch.zeros(len(checked), num_queries, num_frames, device=self.device)
        query_mask = torch.zeros(len(checked), num_queries, dtype=torch.bool, device=self.device)
        frame_mask = torch.zeros(len(checked), num_frames, dtype=torch.bool, device=self.device)
        for b, sim in enumerate(checked):
            batch[b, : sim.shape[0], : sim.shape[1]] = sim
            query_mask[b, : sim.shape[0]] = True
            frame_mask[b, : sim.shape[1]] = True
        network = self.module if module is None else module
        logits = network(batch, query_mask=query_mask, frame_mask=frame_mask) / self.config.temperature
        return [logits[b, : sim.shape[1]] for b, sim in enumerate(checked)]

    def probs(self, sim: torch.Tensor) -> torch.Tensor:
        """``softmax(logits)`` over the T candidates; differentiable."""
        return torch.softmax(self.logits(sim), dim=-1)

    def probabilities(self, sim: torch.Tensor) -> torch.Tensor:
        """``p`` over the T candidates without gradients, on CPU (what :meth:`sample` draws from)."""
        with torch.inference_mode():
            return self.probs(sim).float().cpu()

    # --- inference -----------------------------------------------------------------------------------------------
    def select(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``min(k, T)`` distinct frames sorted by time, by the configured deterministic rule (``generator`` unused)."""
        checked = check_similarity(sim, k)
        num_frames = checked.shape[1]
        out_device = checked.device
        if k >= num_frames:
            return all_frames(num_frames, out_device)
        with torch.inference_mode():
            logits = self.logits(checked)
            rule = self.config.inference_rule
            if rule == "policy":
                chosen = torch.sort(policy.greedy(logits, k, self.suppression_width(num_frames, k))).values
            elif rule == "nms":
                radius = self.config.nms_radius
                radius = default_nms_radius(num_frames, k) if radius is None else radius
                chosen = topk_nms(logits, k, radius)
            elif rule == "topk":
                chosen = topk_indices(logits, k)
            else:
                chosen = quantile_indices(torch.softmax(logits, dim=-1), k)
        return chosen.to(out_device)

    # --- training --------------------------------------------------------------------------------------------------
    def suppression_width(self, num_frames: int, k: int) -> int:
        """The policy's suppression width, in candidates, for ``T = num_frames`` and budget ``k``."""
        return policy.suppression_width(num_frames, k, self.config.suppression)

    def draw(self, logits: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of ``min(k, T)`` frames from the policy over ``logits`` (``[T]``), in draw order, no autograd.

        What the trainers call after their batched forward pass; :meth:`sequence_log_prob` scores the result.
        """
        return policy.draw(logits, k, self.suppression_width(logits.shape[-1], k), generator=generator)

    def sequence_log_prob(
        self, logits: torch.Tensor, order: torch.Tensor, estimator: Estimator = "plackett_luce"
    ) -> torch.Tensor:
        """Log-probability of the draw ``order`` (draw order) given ``logits [T]``; differentiable.

        ``"plackett_luce"`` (default) is the policy's exact log-probability (Plackett–Luce with this sampler's
        suppression); ``"independent"`` is the paper's ``sum_k log p(x_k)``.
        """
        if estimator == "independent":
            return independent_log_prob(logits, order)
        if estimator != "plackett_luce":
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        return policy.log_prob(logits, order, self.suppression_width(logits.shape[-1], order.numel()))

    def sample(self, sim: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> SampledFrames:
        """Draw ``min(k, T)`` frames from the policy, with differentiable log-probabilities.

        ``generator`` (on the sampler's device) makes the draw reproducible.
        """
        checked = check_similarity(sim, k)
        logits = self.logits(checked)
        order = self.draw(logits, k, generator=generator)
        return SampledFrames(
            order=order,
            indices=torch.sort(order).values,
            log_prob=self.sequence_log_prob(logits, order),
            log_prob_independent=independent_log_prob(logits, order),
            logits=logits,
        )

    def log_prob(
        self, sim: torch.Tensor, order: torch.Tensor, *, estimator: Estimator = "plackett_luce"
    ) -> torch.Tensor:
        """Recompute the log-probability of a stored draw (``order`` in draw order) under the current weights.

        ``estimator="plackett_luce"`` (default) is exact for the ordered draw under the policy; ``"independent"`` is
        the paper's sum.
        """
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        checked = check_similarity(sim, 1)
        num_frames = checked.shape[1]
        order = torch.as_tensor(order)
        if order.ndim != 1 or order.numel() == 0 or order.dtype == torch.bool or order.is_floating_point():
            raise ValueError(f"order must be a non-empty 1-D integer tensor of frame indices, got {order!r}")
        if int(order.min()) < 0 or int(order.max()) >= num_frames:
            raise ValueError(f"order holds frame indices outside [0, {num_frames}): {order.tolist()}")
        if torch.unique(order).numel() != order.numel():
            raise ValueError(f"order repeats a frame; draws are without replacement: {order.tolist()}")
        logits = self.logits(checked)
        return self.sequence_log_prob(logits, order.to(logits.device), estimator)

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created if needed); return the folder.

        Each file is written to a temporary name and renamed, so an interrupted save never leaves a half file.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.module.state_dict().items()}
        weights_tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(weights_tmp), metadata={"format": "pt"})
        os.chmod(weights_tmp, umask_file_mode())  # safetensors writes 0600 whatever the umask
        os.replace(weights_tmp, folder / WEIGHTS_FILE)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "training_steps": self.training_steps,
            "num_parameters": self.num_parameters,
        }
        config_tmp = folder / (CONFIG_FILE + ".tmp")
        config_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(config_tmp, folder / CONFIG_FILE)
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", **inference_overrides: Any
    ) -> USampler:
        """Load a :meth:`save_pretrained` folder. Raises :class:`~msjoe.errors.ModelLoadError` naming what is wrong."""
        return cls(checkpoint=folder, device=device, **inference_overrides)

    def __repr__(self) -> str:
        return (
            f"USampler(params={self.num_parameters:,}, rule={self.config.inference_rule!r}, "
            f"trained={self.is_trained}, device={self.device})"
        )


def _read_checkpoint(folder: Path) -> tuple[USamplerConfig, dict[str, torch.Tensor], int]:
    """Config, weights and training steps of a checkpoint folder, or a ModelLoadError saying what is wrong."""
    if not folder.is_dir():
        raise ModelLoadError(f"U-Sampler checkpoint folder {folder} does not exist or is not a directory")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise ModelLoadError(f"U-Sampler checkpoint {folder} has no {CONFIG_FILE} (save_pretrained writes one)")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelLoadError(
            f"{config_path} is not a U-Sampler config (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = meta.get("format_version")
    if version == 1:
        raise ModelLoadError(
            f"{config_path} has format_version 1: it was saved from the earlier U-Net, whose weights do not fit this "
            f"network (format {CHECKPOINT_FORMAT_VERSION}, normalised up/down-sampling and head); train it again"
        )
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ModelLoadError(
            f"{config_path} has format_version {version!r}; this msjoe reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    try:
        saved = dict(meta.get("config", {}))
        # Saved before the policy had suppression: those weights were trained by plain sampling without
        # replacement, i.e. suppression 0; keep that, so their log-probabilities (stage-2 resumption) do not change.
        saved.setdefault("suppression", 0.0)
        config = USamplerConfig.from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} holds an invalid U-Sampler config: {exc}") from exc
    steps = meta.get("training_steps", 0)
    if not is_int(steps) or steps < 0:
        raise ModelLoadError(f"{config_path} has an invalid training_steps {steps!r}")
    if not weights_path.is_file():
        raise ModelLoadError(f"U-Sampler checkpoint {folder} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{weights_path} is not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc
    nonfinite = [
        name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if nonfinite:
        raise ModelLoadError(f"{weights_path} holds NaN or infinite weights in {nonfinite[:5]}")
    return config, state, steps


def _check_state_shapes(module: UNet1D, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Raise a ModelLoadError listing missing, unexpected and wrongly shaped weights (first few of each)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name}: file {list(state[name].shape)} vs config {list(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if mismatched:
        problems.append(f"wrong shapes {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
    if problems:
        raise ModelLoadError(
            f"weights in {folder / WEIGHTS_FILE} do not match its {CONFIG_FILE}: " + "; ".join(problems)
        )
