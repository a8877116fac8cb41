"""Frozen dual encoder (CLIP / SigLIP) features and the query-frame similarity matrix.

The sampler sees a video only through ``S = cos(queries, frames)``: each candidate frame is embedded once by the
image tower (and cached, see :mod:`msjoe.cache`), each query by the text tower, and ``S[j, i] = <q_j, f_i>`` with
both sides L2-normalised (paper). The encoder is frozen: it is never trained, so it runs in inference mode.

Any ``transformers`` model with ``get_image_features`` and ``get_text_features`` works (CLIP, SigLIP, SigLIP 2,
including NaFlex variants), loaded by Hugging Face id or local folder::

    encoder = DualEncoder.from_pretrained("openai/clip-vit-large-patch14")
    frames_emb = encoder.encode_images(frames)          # uint8 [N, H, W, 3] -> float32 [N, D]
    queries_emb = encoder.encode_texts(["a red car"])   # -> float32 [1, D]
    S = similarity(queries_emb, frames_emb)             # -> float32 [1, N]
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from msjoe.defaults import DEFAULT_CLIP
from msjoe.devices import check_device
from msjoe.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Text towers that pool the *last* position (SigLIP family) were trained on texts padded to a fixed length; padding
# to the batch's longest text would change their embeddings. CLIP pools at the EOS token, so any padding works.
_FIXED_LENGTH_TEXT_FAMILIES = frozenset({"siglip", "siglip2"})

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def _as_embedding(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4) or ``pooler_output`` (5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"get_*_features returned {type(output).__name__} without a pooler_output tensor")


ENCODER_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The weight dtypes :meth:`DualEncoder.from_pretrained` takes by name (``"auto"``: the checkpoint's own)."""


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A ``torch.dtype``, or ``"auto"`` (which transformers reads as the dtype saved with the checkpoint)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    parsed = getattr(torch, str(dtype), None)
    if not isinstance(parsed, torch.dtype):
        raise ValueError(f"dtype must be one of {', '.join(ENCODER_DTYPES)} or a torch.dtype, got {dtype!r}")
    return parsed


def _looks_like_local_path(name: str) -> bool:
    """A missing path the user meant as a folder (absolute, relative with ./ or ~, or more than one '/')."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name.endswith("/")


def folder_revision(folder: Path) -> str:
    """A revision for a local model folder: a hash of its files' names, sizes and modification times.

    It changes whenever a file of the checkpoint is rewritten (weights, config, image processor settings), so
    features cached for the old checkpoint are not reused. Reading metadata only keeps it instant for multi-GB
    weights; the price is that a copy of the folder (new mtimes) gets a new revision and re-indexes.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "local-" + digest.hexdigest()[:16]


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub load resolved to, read from the local hub cache (``.../snapshots/<commit>/config.json``)."""
    if revision is not None and _COMMIT_HASH.match(revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        resolved = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an unusual hub cache layout only costs the precise revision, not the load
        return None
    match = re.search(r"snapshots/([0-9a-f]{40})/", Path(resolved).as_posix()) if isinstance(resolved, str) else None
    return match.group(1) if match else None


class DualEncoder:
    """A frozen image/text dual encoder with a processor; embeddings are float32, L2-normalised, on CPU.

    Build it with :meth:`from_pretrained`. The model is in eval mode with gradients disabled and every call runs
    under ``torch.inference_mode``.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, *, model_id: str, revision: str) -> None:
        self.model = model
        self.processor = processor
        self._model_id = model_id
        self._revision = revision
        config = model.config
        self._family = str(getattr(config, "model_type", ""))
        text_config = getattr(config, "text_config", None)
        self._max_text_length: int | None = getattr(text_config, "max_position_embeddings", None)
        # Processor outputs are filtered to what the model's feature methods accept (e.g. NaFlex SigLIP 2 needs
        # pixel_attention_mask and spatial_shapes; CLIP does not take them).
        self._image_arg_names = set(inspect.signature(model.get_image_features).parameters)
        self._text_arg_names = set(inspect.signature(model.get_text_features).parameters)
        self._device_preprocessing: bool | None = None  # decided at the first image batch (see _preprocess)

    # --- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_CLIP,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> DualEncoder:
        """Load a dual encoder by Hugging Face id or local folder (``save_pretrained`` layout).

        Args:
            name_or_path: hub id (``"openai/clip-vit-large-patch14"``, ``"google/siglip2-base-patch16-224"``) or
                a folder holding ``config.json``, weights and the processor files.
            revision: hub branch, tag or commit; ignored for local folders.
            device: where the model runs (``"auto"``: CUDA when available); embeddings are always returned on CPU.
            dtype: the model's weights dtype (``"float32"``, ``"bfloat16"``, ``"float16"``, a ``torch.dtype``, or
                ``"auto"``: the dtype saved with the checkpoint).

        Raises:
            ModelLoadError: missing folder, a folder without a model, a model that is not a dual encoder, no
                processor, or a hub id that cannot be fetched. The message names the id or path.
            DeviceError: ``device`` names no device of this machine (the message lists those that exist).
        """
        from transformers import AutoModel, AutoProcessor

        from msjoe.hub import require_hub_model

        device = check_device(device)  # before the weights load: a missing GPU is a one-line error
        torch_dtype = _parse_dtype(dtype)
        name = str(name_or_path)
        local = Path(name).expanduser()
        if local.exists():
            if not local.is_dir():
                raise ModelLoadError(f"model path {local} is a file; expected a model folder or a Hugging Face id")
            if not (local / "config.json").is_file():
                raise ModelLoadError(f"model folder {local.resolve()} has no config.json: not a saved model")
            source, model_id, load_revision, is_local = str(local), str(local.resolve()), None, True
        elif _looks_like_local_path(name):
            raise ModelLoadError(f"model folder not found: {local}")
        else:
            source, model_id, load_revision, is_local = name, name, revision, False
            require_hub_model(name, revision)

        try:
            model = AutoModel.from_pretrained(source, revision=load_revision, dtype=torch_dtype)
        except Exception as err:
            raise ModelLoadError(f"cannot load a model from {model_id!r}: {type(err).__name__}: {err}") from err
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(
                f"{model_id!r} loads as {type(model).__name__}, which is not a dual encoder "
                "(it lacks get_image_features / get_text_features); use a CLIP or SigLIP checkpoint"
            )
        try:
            processor = AutoProcessor.from_pretrained(source, revision=load_revision)
        except Exception as err:
            raise ModelLoadError(f"cannot load the processor of {model_id!r}: {type(err).__name__}: {err}") from err
        if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ModelLoadError(
                f"{model_id!r} has no combined processor (image processor + tokenizer); got {type(processor).__name__}"
            )

        if is_local:
            resolved_revision = folder_revision(local)
        else:
            resolved_revision = _hub_commit(name, revision) or revision or "unknown"
            if resolved_revision == "unknown":
                logger.warning(
                    "could not resolve the commit of %s; cached features cannot detect a changed checkpoint "
                    "(pass revision=<commit>)",
                    name,
                )

        model.requires_grad_(False)
        model.eval()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        return cls(model, processor, model_id=model_id, revision=resolved_revision)

    # --- properties -------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The hub id, or the absolute path of the local folder, the encoder was loaded from."""
        return self._model_id

    @property
    def revision(self) -> str:
        """What keys the feature cache: the hub commit hash, else :func:`folder_revision` of a local folder."""
        return self._revision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def embed_dim(self) -> int:
        """Width D of the joint embedding space (measured once with a one-word text: configs name it differently)."""
        return int(self.encode_texts(["a"]).shape[1])

    @property
    def image_size(self) -> int | None:
        """Side in pixels of the square image the processor feeds the model (224 for CLIP ViT-L/14).

        ``None`` for processors without a fixed output size (NaFlex SigLIP 2 keeps the aspect ratio).
        """
        height_width = self._model_input_size()
        if height_width is None:
            return None
        return min(height_width)

    @property
    def frame_size(self) -> int | tuple[int, int] | None:
        """The size to decode frames at (``msjoe.video.iter_frames``'s ``size``) so the processor's resize is a no-op.

        Decoding at the model's resolution instead of full resolution saves most of the decode and resize work on
        long videos. The scaler then is FFmpeg's rather than the processor's, a difference far below what changes
        a cosine similarity meaningfully. ``int``: the shorter side (resize-then-center-crop processors such as
        CLIP's); ``(height, width)``: an exact size (SigLIP squashes to a square); ``None``: native resolution.
        """
        image_processor = self.processor.image_processor
        if not getattr(image_processor, "do_resize", False):
            return None
        size = getattr(image_processor, "size", None)
        shortest = _size_field(size, "shortest_edge")
        if shortest and not _size_field(size, "longest_edge"):
            return int(shortest)
        height, width = _size_field(size, "height"), _size_field(size, "width")
        if height and width:
            return int(height), int(width)
        return None

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)`` of the model (100 for trained CLIP): cosine x scale = the model's logits (Q-Frame).

        1.0 for a model without a learned scale.
        """
        param = getattr(self.model, "logit_scale", None)
        return float(param.detach().float().exp().item()) if isinstance(param, torch.Tensor) else 1.0

    def _model_input_size(self) -> tuple[int, int] | None:
        image_processor = self.processor.image_processor
        if getattr(image_processor, "do_center_crop", False):
            crop = getattr(image_processor, "crop_size", None)
            height, width = _size_field(crop, "height"), _size_field(crop, "width")
            if height and width:
                return int(height), int(width)
        frame_size = self.frame_size
        return frame_size if isinstance(frame_size, tuple) else None

    # --- encoding ---------------------------------------------------------------------------------------------
    def encode_images(self, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embed RGB frames: uint8 ``[N, H, W, 3]`` of any size -> float32 ``[N, D]``, L2-normalised, on CPU.

        Preprocessing is the model's own image processor, fed a channels-first uint8 torch batch (its batched
        torchvision path; no PIL round trip), so results match ``processor(images=...)`` exactly.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pixels = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB, got {pixels.dtype} {tuple(pixels.shape)}")
        if len(pixels) == 0:
            return torch.empty(0, self.embed_dim)
        outputs = []
        for start in range(0, len(pixels), batch_size):
            # One contiguous NCHW copy per batch; the processor would otherwise copy each permuted frame separately.
            chunk = pixels[start : start + batch_size].permute(0, 3, 1, 2).contiguous()
            outputs.append(self._run(self.model.get_image_features, self._preprocess(chunk), self._image_arg_names))
        return torch.cat(outputs)

    def _preprocess(self, chunk: torch.Tensor) -> Any:
        """The image processor's inputs for a uint8 NCHW batch; on an accelerator, computed there.

        transformers' torchvision image processors take ``device=``: the uint8 frames then cross to the GPU (a
        quarter of the float32 pixel values' bytes) and resizing, cropping and normalising run there instead of on
        the CPU cores that decoding needs. Processors without that option (or whose output stays on the CPU) are
        fed on the CPU, as on a CPU-only machine; the choice is made once, at the first batch.
        """
        image_processor = self.processor.image_processor
        if self._device_preprocessing is None:
            self._device_preprocessing = False
            if self.device.type != "cpu":
                try:
                    inputs = image_processor(images=list(chunk.unbind(0)), return_tensors="pt", device=self.device)
                except (TypeError, ValueError):
                    inputs = None
                pixel_values = None if inputs is None else inputs.get("pixel_values")
                if isinstance(pixel_values, torch.Tensor) and pixel_values.device == self.device:
                    self._device_preprocessing = True
                    return inputs
        if self._device_preprocessing:
            return image_processor(images=list(chunk.unbind(0)), return_tensors="pt", device=self.device)
        return image_processor(images=list(chunk.unbind(0)), return_tensors="pt")

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts -> float32 ``[Nq, D]``, L2-normalised, on CPU.

        Texts longer than the text tower's context (77 tokens for CLIP) are truncated. SigLIP-family models get
        texts padded to their fixed training length.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, got a single str (wrap it in a list)")
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            raise ValueError(f"texts must be strings, got {[type(t).__name__ for t in texts]}")
        if not texts:
            return torch.empty(0, self.embed_dim)
        padding: dict[str, Any]
        if self._family in _FIXED_LENGTH_TEXT_FAMILIES and self._max_text_length:
            padding = {"padding": "max_length", "max_length": self._max_text_length}
        else:
            padding = {"padding": True}
            if self._max_text_length:
                padding["max_length"] = self._max_text_length
        outputs = []
        for start in range(0, len(texts), batch_size):
            inputs = self.processor.tokenizer(
                texts[start : start + batch_size], truncation=True, return_tensors="pt", **padding
            )
            outputs.append(self._run(self.model.get_text_features, inputs, self._text_arg_names))
        return torch.cat(outputs)

    def _run(self, method: Callable[..., Any], inputs: Any, accepted: set[str]) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        kwargs = {}
        for key, value in inputs.items():
            if key not in accepted or not isinstance(value, torch.Tensor):
                continue
            value = value.to(device)
            kwargs[key] = value.to(dtype) if value.is_floating_point() else value
        with torch.inference_mode():
            embedding = _as_embedding(method(**kwargs))
            return F.normalize(embedding.float(), dim=-1).cpu()

    def __repr__(self) -> str:
        return f"DualEncoder({self.model_id!r}, revision={self.revision!r}, family={self._family!r})"


def _size_field(size: Any, key: str) -> int | None:
    """Read ``key`` from a processor size (a dict in saved configs, a ``SizeDict`` object at runtime)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def similarity(text_embeddings: torch.Tensor, frame_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``S[j, i] = <q_j, f_i> / (|q_j| |f_i|)``: ``[Nq, D] x [T, D] -> [Nq, T]`` float32.

    Both sides are renormalised here even though :class:`DualEncoder` returns unit vectors: cached frame
    embeddings are stored in float16 (norms off by ~1e-4), and callers may pass raw features. Renormalising an
    hour of frames (3600 x 768) costs about a millisecond.
    """
    if text_embeddings.ndim != 2 or frame_embeddings.ndim != 2:
        raise ValueError(
            f"expected [Nq, D] and [T, D] embeddings, got {tuple(text_embeddings.shape)} "
            f"and {tuple(frame_embeddings.shape)}"
        )
    if text_embeddings.shape[1] != frame_embeddings.shape[1]:
        raise ValueError(
            f"embedding widths differ: queries have D={text_embeddings.shape[1]}, frames D={frame_embeddings.shape[1]}"
            " (were they made by different models?)"
        )
    queries = F.normalize(text_embeddings.float(), dim=-1)
    frames = F.normalize(frame_embeddings.to(device=queries.device, dtype=torch.float32), dim=-1)
    return queries @ frames.T
