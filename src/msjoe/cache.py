"""On-disk cache of per-frame embeddings, so a video is decoded and encoded once per (content, model, sampling).

One entry is one safetensors file ``<root>/<2 hex>/<key digest>.safetensors`` holding

- ``embeddings``: ``[T, D]`` float16 (storage dtype; half the disk and read time of float32 at a cosine error of
  about 1e-4, far below the differences between frames that matter to a sampler),
- ``timestamps``: ``[T]`` float64 seconds,
- metadata (JSON strings): format name and version, the full key, the video's probe info, the creation time and a
  SHA-256 of the tensor bytes and of the other metadata (the probe info is used to decode frames later).

Reads verify everything: an entry that is truncated, garbage, fails its checksum, has the wrong shapes, or was
written for another key or format version is logged, deleted and reported as a miss, so the caller rebuilds it.
Writes go to a temporary file in the entry's directory, are fsynced and then atomically renamed into place: readers
and concurrent writers of the same key only ever see complete entries (the last rename wins; both are valid).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from msjoe.atomic import STALE_TEMP_AGE_S, atomic_file, remove_stale_temp_files
from msjoe.errors import CacheError

if TYPE_CHECKING:
    from msjoe.video import VideoInfo

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MSJOE_CACHE"
FORMAT_NAME = "msjoe-frame-features"
FORMAT_VERSION = 1
"""Bump when the entry layout or the way frames are decoded/encoded changes: older entries then read as stale."""

ENTRY_SUFFIX = ".safetensors"
FINGERPRINT_CHUNK = 1 << 20

_SCOPE = "tensors+metadata"
_REMEDY = f"Set ${CACHE_ENV_VAR} or pass FeatureCache(root=...) to a writable folder"


def default_cache_dir() -> Path:
    """``$MSJOE_CACHE`` if set, else ``~/.cache/msjoe/features``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "msjoe" / "features"


def fingerprint(path: str | Path) -> str:
    """A content fingerprint of a (possibly multi-GB) file: SHA-256 of its size and first, middle and last MiB.

    Why these bytes: nearly every edit of a video (re-encode, trim, remux, append) changes its size or its ends,
    where containers keep their headers and indexes (MP4's ``moov`` atom sits at the start or the end); the middle
    MiB catches same-size re-encodes. Reading 3 MiB costs milliseconds whatever the file size, where hashing a 4 GB
    file would take many seconds. Content, not mtime: a copied or renamed file hits the cache, an edited one
    misses. Blind spot: a same-size in-place change confined to bytes outside the three windows (a hex edit, not a
    video workflow). Files up to 3 MiB are hashed whole.

    Raises:
        VideoNotFoundError: ``path`` is missing, or a folder or other non-file.
    """
    from msjoe.video import existing_video_file  # here: the cache's readers need no video decoder

    path = existing_video_file(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"msjoe-fingerprint-v1:{size}:".encode())
    with path.open("rb") as file:
        if size <= 3 * FINGERPRINT_CHUNK:
            digest.update(file.read())
        else:
            for offset in (0, (size - FINGERPRINT_CHUNK) // 2, size - FINGERPRINT_CHUNK):
                file.seek(offset)
                digest.update(file.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()[:32]


def key_digest(fields: dict[str, Any]) -> str:
    """File name stem of a cache entry: SHA-256 of the canonical JSON of its key fields."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40]


_CANONICAL_TYPES: dict[str, type] = {"float": float, "int": int}


@dataclass(frozen=True)
class ContentKey:
    """Base of the keys that name a stored entry (:class:`CacheKey`, :class:`msjoe.frame_store.FrameStoreKey`):
    a frozen dataclass whose ``float`` and ``int`` fields are converted to those types, so ``fps=1`` and
    ``fps=1.0`` name the same entry, and whose :attr:`digest` (the entry's file name stem) is
    :func:`key_digest` of its fields."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            # The annotation is a string under PEP 563 (this module's), else the type itself.
            annotation = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
            canonical = _CANONICAL_TYPES.get(annotation)
            if canonical is not None:
                object.__setattr__(self, item.name, canonical(getattr(self, item.name)))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        return key_digest(self.as_dict())


@dataclass(frozen=True)
class CacheKey(ContentKey):
    """What the cached embeddings depend on: the video's content, the encoder checkpoint and the frame sampling."""

    fingerprint: str
    model_id: str
    revision: str
    fps: float
    max_frames: int


@dataclass
class FrameFeatures:
    """Embeddings of a video's candidate frames, with the times they were taken at and what produced them."""

    timestamps: np.ndarray
    """float64 ``[T]``: seconds from the start of the video, increasing."""
    embeddings: torch.Tensor
    """float32 ``[T, D]``: one L2-normalised image embedding per timestamp."""
    video: VideoInfo | dict[str, Any]
    """The probe result of the video (a dict when :mod:`msjoe.video` cannot rebuild it)."""
    model_id: str
    revision: str
    fps: float
    max_frames: int

    @property
    def video_info(self) -> VideoInfo | None:
        """The probe result as a :class:`VideoInfo`, or None when only its dict form survived."""
        from msjoe.video import VideoInfo

        return self.video if isinstance(self.video, VideoInfo) else None

    @property
    def num_frames(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if shapes or dtypes are inconsistent."""
        if not isinstance(self.timestamps, np.ndarray) or self.timestamps.ndim != 1:
            raise ValueError(f"timestamps must be a 1-D numpy array, got {type(self.timestamps).__name__}")
        if not isinstance(self.embeddings, torch.Tensor) or self.embeddings.ndim != 2:
            raise ValueError("embeddings must be a 2-D torch tensor [T, D]")
        if len(self.timestamps) != self.embeddings.shape[0]:
            raise ValueError(
                f"{len(self.timestamps)} timestamps but {self.embeddings.shape[0]} embeddings: they must match"
            )
        if len(self.timestamps) == 0:
            raise ValueError("FrameFeatures needs at least one frame")


def _video_to_dict(video: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(video) and not isinstance(video, type):
        record = dataclasses.asdict(video)
    elif isinstance(video, dict):
        record = dict(video)
    else:
        raise ValueError(f"video must be a VideoInfo or a dict, got {type(video).__name__}")
    return {k: str(v) if isinstance(v, Path) else v for k, v in record.items()}


def _video_from_dict(record: dict[str, Any]) -> VideoInfo | dict[str, Any]:
    try:
        from msjoe.video import VideoInfo

        fields = {f.name for f in dataclasses.fields(VideoInfo)}
        if set(record) == fields:
            return VideoInfo(**record)
    except (ImportError, TypeError):
        pass
    return record


CHECKSUM_SCOPE_FIELD = "checksum_covers"
"""Metadata field saying what an entry's checksum covers. Entries written before it existed lack it: their
checksum covers the arrays alone, and they are still read (verified that way) rather than rebuilt."""


def covered_metadata(metadata: dict[str, str], checksum_field: str) -> bytes:
    """The bytes of an entry's metadata that its checksum covers: every field but the checksum, canonical JSON."""
    return json.dumps({k: v for k, v in metadata.items() if k != checksum_field}, sort_keys=True).encode()


def _checksum(embeddings: torch.Tensor, timestamps: torch.Tensor, metadata: dict[str, str] | None) -> str:
    """SHA-256 of the tensors and of ``metadata`` (all fields but the checksum; ``None``: the tensors alone, as
    entries written before :data:`CHECKSUM_SCOPE_FIELD` were)."""
    digest = hashlib.sha256()
    # Hash the tensors' memory in place (buffer protocol): no copy of a multi-MB entry.
    digest.update(embeddings.contiguous().view(torch.uint8).numpy())
    digest.update(timestamps.contiguous().view(torch.uint8).numpy())
    if metadata is not None:
        digest.update(covered_metadata(metadata, "checksum"))
    return "sha256:" + digest.hexdigest()


class _CorruptEntry(Exception):
    """Internal: why an entry cannot be used (turned into a warning and a deletion)."""


class FeatureCache:
    """A directory of :class:`FrameFeatures` entries keyed by :class:`CacheKey`.

    Args:
        root: the cache directory (created on first write); ``None`` uses :func:`default_cache_dir`.
        storage_dtype: dtype of stored embeddings (``torch.float16`` by default; ``torch.float32`` for exactness).
    """

    def __init__(self, root: str | Path | None = None, *, storage_dtype: torch.dtype = torch.float16) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        if storage_dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"storage_dtype must be float16, bfloat16 or float32, got {storage_dtype}")
        self.storage_dtype = storage_dtype

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def path(self, key: CacheKey) -> Path:
        """Where the entry for ``key`` lives (whether or not it exists)."""
        digest = key.digest
        return self.root / digest[:2] / f"{digest}{ENTRY_SUFFIX}"

    def __contains__(self, key: CacheKey) -> bool:
        """Whether an entry file exists (not verified; :meth:`get` verifies)."""
        return self.path(key).is_file()

    # --- reading ----------------------------------------------------------------------------------------------
    def get(self, key: CacheKey) -> FrameFeatures | None:
        """The cached features for ``key``, or ``None`` on a miss.

        A corrupt or stale entry is logged (``logging.warning`` with the file and the reason), deleted and reported
        as a miss. Raises :class:`CacheError` only if the file exists but cannot be read (permissions, I/O error).
        """
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no entry (or not even a cache directory yet)
            return None
        except OSError as err:
            raise CacheError(f"cannot read feature cache entry {path}: {err}") from err
        try:
            return self._decode(data, key)
        except _CorruptEntry as reason:
            logger.warning("feature cache: removing unusable entry %s (%s); it will be rebuilt", path, reason)
            self._unlink(path)
            return None

    def _decode(self, data: bytes, key: CacheKey) -> FrameFeatures:
        metadata = _read_metadata(data)
        if metadata.get("format") != FORMAT_NAME:
            raise _CorruptEntry(f"not a {FORMAT_NAME} file")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise _CorruptEntry(f"stale format version {metadata.get('format_version')} (current {FORMAT_VERSION})")
        try:
            stored_key = json.loads(metadata["key"])
            video = json.loads(metadata["video"])
            expected_checksum = metadata["checksum"]
            num_frames, embed_dim = int(metadata["num_frames"]), int(metadata["embed_dim"])
        except (KeyError, ValueError, TypeError) as err:
            raise _CorruptEntry(f"bad metadata ({type(err).__name__}: {err})") from err
        if stored_key != key.as_dict():
            differing = sorted(k for k in key.as_dict() if stored_key.get(k) != key.as_dict()[k])
            raise _CorruptEntry(f"stale: written for another key (differs in {', '.join(differing) or 'fields'})")
        try:
            tensors = load_safetensors(data)
        except Exception as err:  # safetensors raises its own error type for truncated or inconsistent buffers
            raise _CorruptEntry(f"unreadable tensors ({type(err).__name__}: {err})") from err
        embeddings, timestamps = tensors.get("embeddings"), tensors.get("timestamps")
        if embeddings is None or timestamps is None:
            raise _CorruptEntry(f"missing tensors (found {sorted(tensors)})")
        if embeddings.shape != (num_frames, embed_dim) or timestamps.shape != (num_frames,) or num_frames < 1:
            raise _CorruptEntry(
                f"wrong shapes: embeddings {tuple(embeddings.shape)}, timestamps {tuple(timestamps.shape)}, "
                f"expected ({num_frames}, {embed_dim}) and ({num_frames},)"
            )
        if not embeddings.is_floating_point() or timestamps.dtype != torch.float64:
            raise _CorruptEntry(f"wrong dtypes: embeddings {embeddings.dtype}, timestamps {timestamps.dtype}")
        scope = metadata.get(CHECKSUM_SCOPE_FIELD)
        if scope not in (None, _SCOPE):
            raise _CorruptEntry(f"unknown checksum scope {scope!r}")
        if _checksum(embeddings, timestamps, metadata if scope else None) != expected_checksum:
            raise _CorruptEntry("checksum mismatch (damaged data or metadata)")
        return FrameFeatures(
            timestamps=timestamps.numpy(),
            embeddings=embeddings.float(),
            video=_video_from_dict(video),
            model_id=key.model_id,
            revision=key.revision,
            fps=key.fps,
            max_frames=key.max_frames,
        )

    # --- writing ----------------------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Create the root if needed and check it is writable, so a long indexing job fails before it starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create the feature cache directory {self.root}: {err}", remedy=_REMEDY) from err
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise CacheError(f"the feature cache directory {self.root} is not writable", remedy=_REMEDY)

    def put(self, key: CacheKey, features: FrameFeatures) -> FrameFeatures:
        """Store ``features`` under ``key`` atomically; return them exactly as :meth:`get` will read them back.

        The returned embeddings went through the storage dtype, so a first (miss) and a later (hit) call give
        identical results. Raises :class:`CacheError` if the cache directory or the file cannot be written.
        """
        features.validate()
        embeddings = features.embeddings.detach().cpu().to(self.storage_dtype).contiguous()
        timestamps = torch.from_numpy(np.ascontiguousarray(features.timestamps, dtype=np.float64))
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "key": json.dumps(key.as_dict(), sort_keys=True),
            "video": json.dumps(_video_to_dict(features.video), sort_keys=True),
            "num_frames": str(embeddings.shape[0]),
            "embed_dim": str(embeddings.shape[1]),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            CHECKSUM_SCOPE_FIELD: _SCOPE,
        }
        metadata["checksum"] = _checksum(embeddings, timestamps, metadata)
        data = save_safetensors({"embeddings": embeddings, "timestamps": timestamps}, metadata=metadata)

        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create the feature cache directory {path.parent}: {err}", remedy=_REMEDY) from err
        self._remove_stale_temp_files(path.parent)
        _atomic_write(path, data)
        return dataclasses.replace(
            features,
            timestamps=timestamps.numpy().copy(),
            embeddings=embeddings.float(),
            model_id=key.model_id,
            revision=key.revision,
            fps=key.fps,
            max_frames=key.max_frames,
        )

    def remove(self, key: CacheKey) -> bool:
        """Delete the entry for ``key``; return whether one existed."""
        return self._unlink(self.path(key))

    def clean(self, older_than_s: float = STALE_TEMP_AGE_S) -> int:
        """Delete temporary files left by crashed writes (older than ``older_than_s``); return how many."""
        if not self.root.is_dir():
            return 0
        return sum(
            self._remove_stale_temp_files(shard, older_than_s) for shard in self.root.iterdir() if shard.is_dir()
        )

    @staticmethod
    def _remove_stale_temp_files(directory: Path, older_than_s: float = STALE_TEMP_AGE_S) -> int:
        return remove_stale_temp_files(directory, older_than_s)

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise CacheError(f"cannot delete feature cache entry {path}: {err}") from err


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (8-byte little-endian header length, then a JSON header)."""
    if len(data) < 8:
        raise _CorruptEntry(f"truncated ({len(data)} bytes)")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > len(data) - 8:
        raise _CorruptEntry(f"truncated or garbage header (claims {header_length} bytes, file has {len(data)})")
    try:
        header = json.loads(data[8 : 8 + header_length])
    except (UnicodeDecodeError, ValueError) as err:
        raise _CorruptEntry(f"garbage header ({type(err).__name__})") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise _CorruptEntry("no metadata in header")
    return metadata


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as file:
        try:
            file.write(data)
        except OSError as err:
            raise CacheError(f"cannot write feature cache entry {path}: {err}") from err


@contextmanager
def atomic_writer(path: Path, *, what: str = "feature cache entry") -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s content to, so that ``path`` is either absent/old or complete, never partial
    (:func:`msjoe.atomic.atomic_file`: a locked temp file beside ``path``, fsynced and renamed onto it).

    If the body raises, the temp file is removed, the previous entry, if any, is untouched and the exception
    propagates unchanged; failures of the flush, fsync or rename raise :class:`CacheError` naming ``what`` and
    ``path``. Leftovers of a killed process are removed by :func:`remove_stale_temp_files`.
    """

    def write_error(err: OSError) -> CacheError:
        return CacheError(f"cannot write {what} {path}: {err}")

    with atomic_file(path, prefix=f".{path.stem}.", on_write_error=write_error) as file:
        yield file
