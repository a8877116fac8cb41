"""On-disk store of a video's candidate frames as JPEGs, so questions about an indexed video decode no video.

Every preview and key frame the pipeline shows the MLLM is one of the 1-fps candidate frames. Decoding them from
the video costs a seek and up to a GOP of decoded frames each (hundreds of ms for K = 32 on a 360p video with a
keyframe every 10 s); reading them back as small JPEGs costs well under a millisecond each. ``msjoe index``,
``ask``, ``eval``, ``serve`` and :class:`~msjoe.pipeline.VideoQA` keep them by default (``--no-store-frames``)::

    store = FrameStore.for_cache(cache)                     # <feature cache root>/frames
    index_video("talk.mp4", encoder, cache, frame_store=store)   # built once, in the indexing pass
    frames = store.read("talk.mp4", times, 448 * 448)       # uint8 [N, H, W, 3], or None on a miss

What is stored
--------------
All candidate frames of one (video content, ``fps``, ``max_frames``) grid -- the same grid as the feature cache --
at the size the pipeline's decode path would produce for the store's pixel budget: the native size if the frame
fits ``max_pixels``, else :func:`~msjoe.video.fit_to_pixel_budget` with even sides (aspect kept). Frames are
JPEG-encoded at ``quality`` (90 by default, 4:2:0 chroma like the video itself). **JPEG is lossy**: a stored frame
differs from the decode path's frame by compression errors (mean absolute error at quality 90: 0.02 levels in
255 on the flat-coloured synthetic benchmark video, about 3 on textured, noisy frames), where the decode path is
exact. Smaller budgets are served by shrinking the stored frame (the JPEG
decoder's DCT scaling, then area averaging) to the size the decode path would give for that budget.

The entry file
--------------
One safetensors file per entry, ``<root>/<2 hex>/<key digest>.safetensors``, laid out for random access:

- ``offsets``: int64 ``[N + 1]``, byte offsets of each frame's JPEG inside ``jpeg``,
- ``timestamps``: float64 ``[N]``, the candidate times (seconds, increasing),
- ``crc32``: uint32 ``[N]``, a CRC-32 of each JPEG,
- ``jpeg``: uint8 ``[bytes]``, the JPEGs back to back,
- metadata: format name and version, the full key, the video's probe info, the stored frame size, the creation
  time and a SHA-256 of ``offsets``, ``timestamps``, ``crc32`` and the other metadata.

A read parses the header and the small arrays (about 20 bytes a frame) and then reads only the JPEGs it needs,
so its cost does not grow with the video's length. Verification matches that: the file length must be exactly
what the header declares (catches truncation and appended garbage), the index arrays must match their SHA-256, and
each JPEG read must match its CRC-32 (catches damaged bytes where they are used, without hashing the whole file).
An unusable entry (truncated, garbage, failed check, other key, older format version) is logged, deleted and
reported as a miss. Writes stream the JPEGs to a temp file (memory holds one batch of frames, whatever the
video's length) that is fsynced and atomically renamed into place (:func:`msjoe.cache.atomic_writer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from msjoe.cache import (
    CHECKSUM_SCOPE_FIELD,
    ENTRY_SUFFIX,
    STALE_TEMP_AGE_S,
    ContentKey,
    FeatureCache,
    atomic_writer,
    covered_metadata,
    default_cache_dir,
    remove_stale_temp_files,
)
from msjoe.cache import fingerprint as content_fingerprint
from msjoe.checks import check_int, check_sampling
from msjoe.decode_worker import encode_jpegs
from msjoe.errors import CacheError
from msjoe.video import (
    DEFAULT_FPS,
    DEFAULT_MAX_FRAMES,
    VideoInfo,
    candidate_timestamps,
    fit_to_pixel_budget,
    iter_frames,
    probe,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_QUALITY",
    "FRAMES_SUBDIR",
    "EntryWriter",
    "FrameStore",
    "FrameStoreKey",
    "budget_frame_size",
    "encode_jpegs",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "msjoe-frame-store"
FORMAT_VERSION = 1
"""Bump when the entry layout or the way frames are decoded/encoded changes: older entries then read as stale."""

DEFAULT_MAX_PIXELS = 448 * 448
"""The pipeline's answer-time budget (``PipelineConfig.answer_max_pixels``): key frames are served as stored."""
DEFAULT_QUALITY = 90
FRAMES_SUBDIR = "frames"
"""Default store folder inside a feature cache root (feature shards are 2-hex-digit folders: no clash)."""

ProgressCallback = Callable[[int, int], None]
_SCOPE = "index+metadata"
_REMEDY = "Pass FrameStore(root=...) a writable folder (FrameStore.for_cache: the feature cache's)"

# Requested times match stored candidates within this (the same float64 grid gives exact equality; the slack
# absorbs a round trip through float32 or JSON).
_TIME_TOLERANCE_S = 1e-6
_BUILD_BATCH = 32  # frames decoded at a time while building: bounds memory
_MAX_HEADER_BYTES = 1 << 20  # a real header is a few kB; a larger claimed length is garbage
_TENSORS = ("offsets", "timestamps", "crc32", "jpeg")
_DTYPES = {"offsets": ("I64", np.int64), "timestamps": ("F64", np.float64), "crc32": ("U32", np.uint32)}


def budget_frame_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` frame shown at ``max_pixels``: the native size if it fits, else the
    largest even-sided size within budget with the same aspect (what the pipeline's decode path produces)."""
    if height * width <= max_pixels:
        return height, width
    return fit_to_pixel_budget(height, width, max_pixels, multiple=2)


@dataclass(frozen=True)
class FrameStoreKey(ContentKey):
    """What a stored entry depends on: the video's content, the candidate grid and how frames were stored.

    The format version is not part of the key (it is checked from the entry's metadata), so entries of an older
    version sit at the same path and are replaced on the next build.
    """

    fingerprint: str
    fps: float
    max_frames: int
    max_pixels: int
    quality: int


class _CorruptEntry(Exception):
    """Internal: why an entry cannot be used (turned into a warning and a deletion)."""


@dataclass(frozen=True)
class _EntryIndex:
    """The verified header and index arrays of an entry; frames are read from ``data_start + offsets[i]``."""

    timestamps: np.ndarray
    offsets: np.ndarray
    crc32: np.ndarray
    jpeg_start: int
    frame_height: int
    frame_width: int
    video_height: int
    video_width: int


class FrameStore:
    """A directory of per-video JPEG frame entries keyed by :class:`FrameStoreKey`.

    Args:
        root: the store directory (created on first write); ``None`` uses ``<default feature cache>/frames``
            (``$MSJOE_CACHE/frames`` or ``~/.cache/msjoe/features/frames``). :meth:`for_cache` puts it inside a
            given feature cache.
        max_pixels: pixel budget of stored frames; reads may ask for this budget or a smaller one. The default is
            the pipeline's answer budget, so key frames are served without resizing.
        quality: JPEG quality (1-95). 90 keeps compression errors small; lower saves disk.
    """

    def __init__(
        self, root: str | Path | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, quality: int = DEFAULT_QUALITY
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir() / FRAMES_SUBDIR
        check_int("max_pixels", max_pixels, minimum=4)  # at least 2x2: stored sides are even
        check_int("quality", quality, minimum=1, maximum=95)  # libjpeg above 95 only grows files
        self.max_pixels = int(max_pixels)
        self.quality = int(quality)

    @classmethod
    def for_cache(
        cls, cache: FeatureCache, *, max_pixels: int = DEFAULT_MAX_PIXELS, quality: int = DEFAULT_QUALITY
    ) -> FrameStore:
        """The store in ``<cache.root>/frames``: frames live and are deleted together with their features."""
        return cls(cache.root / FRAMES_SUBDIR, max_pixels=max_pixels, quality=quality)

    def __repr__(self) -> str:
        return f"FrameStore({str(self.root)!r}, max_pixels={self.max_pixels}, quality={self.quality})"

    # --- keys -------------------------------------------------------------------------------------------------
    def key(
        self,
        video: str | Path,
        *,
        fps: float = DEFAULT_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        fingerprint: str | None = None,
    ) -> FrameStoreKey:
        """The key of ``video``'s entry for this candidate grid.

        ``fingerprint``: the video's :func:`msjoe.cache.fingerprint` if already known (skips reading 3 MiB).
        """
        check_sampling(fps, max_frames)
        fp = fingerprint if fingerprint is not None else content_fingerprint(video)
        return FrameStoreKey(fp, fps, max_frames, self.max_pixels, self.quality)

    def path(self, key: FrameStoreKey) -> Path:
        """Where the entry for ``key`` lives (whether or not it exists)."""
        digest = key.digest
        return self.root / digest[:2] / f"{digest}{ENTRY_SUFFIX}"

    # --- reading ----------------------------------------------------------------------------------------------
    def has(
        self,
        video: str | Path,
        *,
        fps: float = DEFAULT_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        fingerprint: str | None = None,
    ) -> bool:
        """Whether a usable entry exists: header, length and index checked (JPEG checksums are checked on read).

        An unusable entry is logged, deleted and reported as absent.
        """
        key = self.key(video, fps=fps, max_frames=max_frames, fingerprint=fingerprint)
        return self._load(key, lambda file, index: True) is not None

    def read(
        self,
        video: str | Path,
        timestamps: Sequence[float] | np.ndarray,
        max_pixels: int,
        *,
        fps: float = DEFAULT_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        fingerprint: str | None = None,
    ) -> np.ndarray | None:
        """The stored frames at ``timestamps``, uint8 RGB ``[N, H, W, 3]`` in the caller's order, or ``None``.

        ``(H, W)`` is the size the decode path gives for ``max_pixels`` (:func:`budget_frame_size` of the video's
        display size). A miss (``None``) means: no usable entry for this video and grid, a time that is not one
        of the stored candidates (matched within 1 µs), or a budget whose size is larger than the stored frames
        (a budget above the store's, unless the video is stored at its native size). The caller then decodes
        the video. A damaged entry is logged, deleted and missed.

        Raises:
            ValueError: ``timestamps`` is not a 1-D sequence of finite numbers, or ``max_pixels`` is not a
                positive integer.
            VideoNotFoundError: ``video`` does not exist (when no ``fingerprint`` is given).
            CacheError: the entry exists but cannot be read (permissions, I/O error).
        """
        times = _check_times(timestamps)
        check_int("max_pixels", max_pixels, minimum=1)
        key = self.key(video, fps=fps, max_frames=max_frames, fingerprint=fingerprint)
        return self._load(key, lambda file, index: _read_frames(file, index, times, int(max_pixels)))

    def _load(self, key: FrameStoreKey, use: Callable[[BinaryIO, _EntryIndex], Any]) -> Any:
        """Open ``key``'s entry, verify its index and return ``use(file, index)``; None if absent or unusable.

        Everything happens on one open file, so a concurrent rebuild (an atomic rename) cannot mix two entries.
        """
        path = self.path(key)
        try:
            file = open(path, "rb")  # noqa: SIM115 (closed below; the error handling differs per step)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            raise CacheError(f"cannot read frame store entry {path}: {err}") from err
        try:
            with file:
                return use(file, _read_index(file, key))
        except _CorruptEntry as reason:
            logger.warning("frame store: removing unusable entry %s (%s); it will be rebuilt", path, reason)
            self._unlink(path)
            return None
        except OSError as err:
            raise CacheError(f"cannot read frame store entry {path}: {err}") from err

    # --- writing ----------------------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Create the root if needed and check it is writable, so a long indexing job fails before it starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create the frame store directory {self.root}: {err}", remedy=_REMEDY) from err
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise CacheError(f"the frame store directory {self.root} is not writable", remedy=_REMEDY)

    def build(
        self,
        video: str | Path,
        *,
        fps: float = DEFAULT_FPS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        threads: int = 0,
        fingerprint: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Decode ``video``'s candidate frames at the store's size and write them as one entry (replacing any).

        One streaming decode pass (``iter_frames``, seek-aware; ``threads`` decoder threads, 0 = one per core);
        memory holds one batch of frames. ``progress(frames_done, frames_total)`` is called after each batch.

        Raises:
            msjoe.errors.VideoError subclasses: the video is missing, not a video, empty, corrupt, ...
            CacheError: the store directory or the entry cannot be written.
        """
        check_int("threads", threads, minimum=0)
        key = self.key(video, fps=fps, max_frames=max_frames, fingerprint=fingerprint)
        self.ensure_writable()  # fail before decoding, not after
        info = probe(video)
        timestamps = candidate_timestamps(info, fps=fps, max_frames=max_frames)
        frames = iter_frames(video, timestamps, self.frame_size(info), threads=threads, batch_size=_BUILD_BATCH)
        with self.writing(key, info, timestamps) as entry:
            if progress is not None:
                progress(0, len(timestamps))
            for batch in frames:
                entry.add(encode_jpegs(batch, self.quality))
                if progress is not None:
                    progress(entry.num_written, len(timestamps))

    def frame_size(self, info: VideoInfo) -> tuple[int, int]:
        """``(height, width)`` at which this store keeps the frames of a video with this probe result."""
        return budget_frame_size(info.height, info.width, self.max_pixels)

    @contextlib.contextmanager
    def writing(self, key: FrameStoreKey, info: VideoInfo, timestamps: np.ndarray) -> Iterator[EntryWriter]:
        """An :class:`EntryWriter` for ``key``'s entry (``info``'s video at the candidate ``timestamps``): add the
        JPEGs of the frames :meth:`frame_size` gives, in candidate order (:func:`encode_jpegs`); the entry appears
        atomically when the block ends after every frame was added, and not at all if it raises.

        For callers that decode the frames themselves, e.g. indexing, which makes the encoder's input and these
        frames in one decoding pass. Raises :class:`CacheError` if the store cannot be written.
        """
        self.ensure_writable()
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create the frame store directory {path.parent}: {err}", remedy=_REMEDY) from err
        remove_stale_temp_files(path.parent)
        height, width = self.frame_size(info)
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "key": json.dumps(key.as_dict(), sort_keys=True),
            "video": json.dumps(_video_to_dict(info), sort_keys=True),
            "frame_height": str(height),
            "frame_width": str(width),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with atomic_writer(path, what="frame store entry") as file:
            writer = EntryWriter(_EntryFile(file, path), timestamps, metadata)
            yield writer
            writer.finish()

    def remove(self, key: FrameStoreKey) -> bool:
        """Delete the entry for ``key``; return whether one existed."""
        return self._unlink(self.path(key))

    def clean(self, older_than_s: float = STALE_TEMP_AGE_S) -> int:
        """Delete temporary files left by crashed builds (older than ``older_than_s``); return how many."""
        if not self.root.is_dir():
            return 0
        return sum(remove_stale_temp_files(shard, older_than_s) for shard in self.root.iterdir() if shard.is_dir())

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise CacheError(f"cannot delete frame store entry {path}: {err}") from err


# --- entry layout --------------------------------------------------------------------------------------------


def _header_bytes(metadata: dict[str, str], num_frames: int, jpeg_bytes: int, reserve: int | None = None) -> bytes:
    """The safetensors header (JSON, space-padded to ``reserve`` or to a multiple of 8) for these array sizes."""
    lengths = {"offsets": num_frames + 1, "timestamps": num_frames, "crc32": num_frames}
    header: dict[str, Any] = {"__metadata__": metadata}
    start = 0
    for name, length in lengths.items():
        dtype_name, dtype = _DTYPES[name]
        end = start + length * np.dtype(dtype).itemsize
        header[name] = {"dtype": dtype_name, "shape": [length], "data_offsets": [start, end]}
        start = end
    header["jpeg"] = {"dtype": "U8", "shape": [jpeg_bytes], "data_offsets": [start, start + jpeg_bytes]}
    text = json.dumps(header, separators=(",", ":")).encode()
    padded = reserve if reserve is not None else -(-len(text) // 8) * 8
    if len(text) > padded:
        raise AssertionError(f"frame store header grew past its reserved {padded} bytes")  # a bug, not bad input
    return text + b" " * (padded - len(text))


@dataclass(frozen=True)
class _EntryFile:
    """The temp file of an entry being written; write errors name the entry (decoding errors pass unchanged)."""

    file: BinaryIO
    entry: Path

    def write(self, data: bytes, *, at: int | None = None) -> None:
        try:
            if at is not None:
                self.file.seek(at)
            self.file.write(data)
        except OSError as err:
            raise CacheError(f"cannot write frame store entry {self.entry}: {err}") from err


class EntryWriter:
    """Streams an entry's JPEGs after a reserved header; :meth:`finish` fills in the header and the index arrays
    (their sizes are known only then). Memory holds the small index arrays, not the JPEGs."""

    def __init__(self, file: _EntryFile, timestamps: np.ndarray, metadata: dict[str, str]) -> None:
        self._file = file
        self._timestamps = np.ascontiguousarray(timestamps, dtype=np.float64)
        self._metadata = metadata
        num_frames = len(self._timestamps)
        # The header's length depends only on the digits of the blob size and on the checksum (fixed length):
        # reserve room for the largest possible values, so the JPEGs can be written before the header is known.
        placeholder = {**metadata, CHECKSUM_SCOPE_FIELD: _SCOPE, "index_checksum": "sha256:" + "0" * 64}
        self._reserve = len(_header_bytes(placeholder, num_frames, jpeg_bytes=2**63 - 1))
        index_bytes = 20 * num_frames + 8  # offsets (8 [N+1]) + timestamps (8 [N]) + crc32 (4 [N])
        file.write(b"", at=8 + self._reserve + index_bytes)  # leave room for the header and index, written last
        self._offsets = np.zeros(num_frames + 1, dtype=np.int64)
        self._crcs = np.zeros(num_frames, dtype=np.uint32)
        self.num_written = 0

    def add(self, jpegs: Iterable[bytes]) -> None:
        """Append the JPEGs of the next candidates, in order."""
        for jpeg in jpegs:
            if self.num_written == len(self._timestamps):
                raise AssertionError(f"more frames than the {len(self._timestamps)} timestamps")  # a caller's bug
            self._file.write(jpeg)
            self._crcs[self.num_written] = zlib.crc32(jpeg)
            self._offsets[self.num_written + 1] = self._offsets[self.num_written] + len(jpeg)
            self.num_written += 1

    def finish(self) -> None:
        num_frames = len(self._timestamps)
        if self.num_written != num_frames:
            raise AssertionError(f"got {self.num_written} frames for {num_frames} timestamps")  # a caller's bug
        metadata = {**self._metadata, CHECKSUM_SCOPE_FIELD: _SCOPE}
        metadata["index_checksum"] = _index_checksum(self._offsets, self._timestamps, self._crcs, metadata)
        header = _header_bytes(metadata, num_frames, int(self._offsets[-1]), self._reserve)
        index = self._offsets.tobytes() + self._timestamps.tobytes() + self._crcs.tobytes()
        self._file.write(struct.pack("<Q", len(header)) + header + index, at=0)


def _index_checksum(
    offsets: np.ndarray, timestamps: np.ndarray, crcs: np.ndarray, metadata: dict[str, str] | None
) -> str:
    """SHA-256 of the index arrays and of ``metadata`` (all fields but the checksum; ``None``: the arrays alone,
    as entries written before :data:`~msjoe.cache.CHECKSUM_SCOPE_FIELD` were)."""
    digest = hashlib.sha256()
    for array in (offsets, timestamps, crcs):
        digest.update(array.data)
    if metadata is not None:
        digest.update(covered_metadata(metadata, "index_checksum"))
    return "sha256:" + digest.hexdigest()


def _read_index(file: BinaryIO, key: FrameStoreKey) -> _EntryIndex:
    """Parse and verify an entry's header and index arrays (raises :class:`_CorruptEntry`)."""
    file_size = _file_size(file)
    prefix = file.read(8)
    if len(prefix) < 8:
        raise _CorruptEntry(f"truncated ({file_size} bytes)")
    (header_length,) = struct.unpack("<Q", prefix)
    if header_length > min(file_size - 8, _MAX_HEADER_BYTES):
        raise _CorruptEntry(f"truncated or garbage header (claims {header_length} bytes, file has {file_size})")
    try:
        header = json.loads(file.read(header_length))
        metadata = header["__metadata__"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise _CorruptEntry(f"garbage header ({type(err).__name__})") from err
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise _CorruptEntry(f"not a {FORMAT_NAME} file")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise _CorruptEntry(f"stale format version {metadata.get('format_version')} (current {FORMAT_VERSION})")
    try:
        stored_key = json.loads(metadata["key"])
        video = json.loads(metadata["video"])
        frame_height, frame_width = int(metadata["frame_height"]), int(metadata["frame_width"])
        video_height, video_width = int(video["height"]), int(video["width"])
        expected_checksum = metadata["index_checksum"]
        specs = {name: header[name] for name in _TENSORS}
        num_frames = int(specs["timestamps"]["shape"][0])
        jpeg_begin, jpeg_end = (int(v) for v in specs["jpeg"]["data_offsets"])
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise _CorruptEntry(f"bad metadata ({type(err).__name__}: {err})") from err
    if stored_key != key.as_dict():
        differing = sorted(k for k in key.as_dict() if stored_key.get(k) != key.as_dict()[k])
        raise _CorruptEntry(f"stale: written for another key (differs in {', '.join(differing) or 'fields'})")
    expected_begin = 20 * num_frames + 8
    if num_frames < 1 or jpeg_begin != expected_begin or jpeg_end < jpeg_begin:
        raise _CorruptEntry(f"bad layout ({num_frames} frames, jpeg at {jpeg_begin}..{jpeg_end})")
    data_start = 8 + header_length
    if data_start + jpeg_end != file_size:
        raise _CorruptEntry(f"length mismatch: the header declares {data_start + jpeg_end} bytes, file has {file_size}")
    index = file.read(expected_begin)
    if len(index) != expected_begin:
        raise _CorruptEntry("truncated index")
    offsets = np.frombuffer(index, dtype="<i8", count=num_frames + 1)
    timestamps = np.frombuffer(index, dtype="<f8", count=num_frames, offset=8 * (num_frames + 1))
    crcs = np.frombuffer(index, dtype="<u4", count=num_frames, offset=16 * num_frames + 8)
    scope = metadata.get(CHECKSUM_SCOPE_FIELD)
    if scope not in (None, _SCOPE):
        raise _CorruptEntry(f"unknown checksum scope {scope!r}")
    if _index_checksum(offsets, timestamps, crcs, metadata if scope else None) != expected_checksum:
        raise _CorruptEntry("index checksum mismatch (damaged data or metadata)")
    if offsets[0] != 0 or offsets[-1] != jpeg_end - jpeg_begin or np.any(np.diff(offsets) <= 0):
        raise _CorruptEntry("inconsistent frame offsets")
    return _EntryIndex(
        timestamps=timestamps,
        offsets=offsets,
        crc32=crcs,
        jpeg_start=data_start + jpeg_begin,
        frame_height=frame_height,
        frame_width=frame_width,
        video_height=video_height,
        video_width=video_width,
    )


def _read_frames(file: BinaryIO, index: _EntryIndex, times: np.ndarray, max_pixels: int) -> np.ndarray | None:
    """Decode the stored frames at ``times`` at ``max_pixels``; None if a time is not stored or the size too big."""
    height, width = budget_frame_size(index.video_height, index.video_width, max_pixels)
    if height > index.frame_height or width > index.frame_width:
        return None  # the stored frames are smaller than what the decode path would give
    positions = _match_times(index.timestamps, times)
    if positions is None:
        return None
    out = np.empty((len(times), height, width, 3), dtype=np.uint8)
    decoded: dict[int, int] = {}  # frame -> first output row holding it (duplicates are decoded once)
    for row, frame in enumerate(positions.tolist()):
        if frame in decoded:
            out[row] = out[decoded[frame]]
            continue
        decoded[frame] = row
        begin, end = int(index.offsets[frame]), int(index.offsets[frame + 1])
        file.seek(index.jpeg_start + begin)
        jpeg = file.read(end - begin)
        if len(jpeg) != end - begin or zlib.crc32(jpeg) != int(index.crc32[frame]):
            raise _CorruptEntry(f"checksum mismatch in frame {frame} (damaged data)")
        out[row] = _decode_jpeg(jpeg, (index.frame_height, index.frame_width), (height, width), frame)
    return out


def _match_times(stored: np.ndarray, times: np.ndarray) -> np.ndarray | None:
    """Index of the stored time equal (within the tolerance) to each requested time, or None if one is absent."""
    right = np.minimum(np.searchsorted(stored, times), len(stored) - 1)  # first stored time >= t (or the last)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(stored[left] - times) <= np.abs(stored[right] - times), left, right)
    if np.any(np.abs(stored[nearest] - times) > _TIME_TOLERANCE_S):
        return None
    return nearest


def _decode_jpeg(jpeg: bytes, stored_hw: tuple[int, int], out_hw: tuple[int, int], frame: int) -> np.ndarray:
    height, width = out_hw
    try:
        image = Image.open(io.BytesIO(jpeg))
        if image.format != "JPEG" or image.mode != "RGB" or image.size != (stored_hw[1], stored_hw[0]):
            raise _CorruptEntry(f"frame {frame} is a {image.format} {image.mode} {image.size}, expected an RGB JPEG")
        if (height, width) != stored_hw:
            # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size (never below the target) for a fraction of a
            # full decode; area averaging then shrinks it exactly, like the decode path's scaler.
            image.draft("RGB", (width, height))
            image = image.resize((width, height), Image.Resampling.BOX)
        return np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _CorruptEntry(f"undecodable JPEG for frame {frame} ({type(err).__name__}: {err})") from err


# --- small helpers -------------------------------------------------------------------------------------------


def _file_size(file: BinaryIO) -> int:
    file.seek(0, io.SEEK_END)
    size = file.tell()
    file.seek(0)
    return size


def _video_to_dict(info: VideoInfo) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(info).items()}


def _check_times(timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        times = np.asarray(timestamps, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"timestamps must be a 1-D sequence of numbers ({err})") from err
    if times.ndim != 1 or not np.all(np.isfinite(times)):
        raise ValueError(f"timestamps must be a 1-D sequence of finite numbers, got shape {times.shape}")
    return times
