"""Decoding for indexing in worker processes: one segment of one video's candidates at a time.

A worker process (started by :mod:`msjoe.index` with the ``spawn`` method, so it never inherits the parent's CUDA
context or torch threads) takes :class:`Segment` tasks from a queue, decodes each one's candidate frames at the
requested sizes in one pass (:func:`msjoe.video.iter_frames_at_sizes`), JPEG-encodes the frame store's size when
asked (the costliest CPU step after decoding, so it runs here, in parallel), and puts one message per batch on a
bounded result queue: the parent's memory holds at most that queue's batches, whatever the videos' lengths.

This module imports no torch (a worker starts in a fraction of a second); the parent runs the image encoder.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from msjoe.video import Size, iter_frames_at_sizes

# Messages on the result queue: (kind, job, ...).
FRAMES = "frames"
"""``(FRAMES, job, batch_index, encoder_frames or None, jpegs or None)``: one batch of a segment."""
SEGMENT_DONE = "done"
"""``(SEGMENT_DONE, job, segment_index)``: every batch of the segment was sent."""
FAILED = "failed"
"""``(FAILED, job, error)``: the segment could not be decoded (the video is bad); ``error`` is the exception."""


@dataclass(frozen=True)
class Segment:
    """Candidates ``[first_batch * batch_size, ...)`` of one video: a run of whole batches.

    Segments start on batch boundaries, so every batch the parent encodes holds exactly the frames the sequential
    path's batch of the same index holds (equal inputs, equal embeddings). Decoding a segment starts with a seek to
    the keyframe before its first candidate; with 1-fps candidates the sequential path decodes that keyframe's GOP
    up to the candidate too, so splitting costs a seek, not extra decoding.
    """

    job: int
    index: int
    path: str
    timestamps: np.ndarray
    first_batch: int
    batch_size: int
    encoder_size: Size | bool
    """The encoder's decode size; ``False``: no frames for the encoder (only the frame store's)."""
    store_size: tuple[int, int] | None
    """The frame store's ``(height, width)``; None: no JPEGs."""
    quality: int
    threads: int


def encode_jpegs(frames: np.ndarray, quality: int) -> list[bytes]:
    """JPEGs of uint8 RGB frames ``[N, H, W, 3]`` (4:2:0 chroma, like the video itself)."""
    jpegs = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        jpegs.append(buffer.getvalue())
    return jpegs


def decode_segment(segment: Segment, send: Any) -> None:
    """Decode ``segment`` and ``send`` one :data:`FRAMES` message per batch (then :data:`SEGMENT_DONE`)."""
    sizes: list[Size] = []
    if segment.encoder_size is not False:
        sizes.append(segment.encoder_size)
    if segment.store_size is not None:
        sizes.append(segment.store_size)
    batches = iter_frames_at_sizes(
        segment.path, segment.timestamps, sizes, threads=segment.threads, batch_size=segment.batch_size
    )
    for offset, decoded in enumerate(batches):
        encoder_frames = decoded[0] if segment.encoder_size is not False else None
        jpegs = encode_jpegs(decoded[-1], segment.quality) if segment.store_size is not None else None
        send((FRAMES, segment.job, segment.first_batch + offset, encoder_frames, jpegs))
    send((SEGMENT_DONE, segment.job, segment.index))


def count_frames(segment: Segment) -> int:
    """Decode ``segment`` as a worker does, keep nothing, return its number of frames (for timing decoding alone)."""
    frames = 0

    def count(message: tuple) -> None:
        nonlocal frames
        if message[0] == FRAMES:
            frames += len(message[3] if message[3] is not None else message[4])

    decode_segment(segment, count)
    return frames


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
    """Start spawned processes without re-running the parent's ``__main__`` in them.

    ``spawn`` children import the parent's main script (as ``__mp_main__``) before running their target: a script
    that imports torch and transformers costs each worker seconds of start-up, for nothing when the target is
    found by its module's name (as :func:`run` is). The preparation data is read when a process
    starts, so hiding the script's path and spec for that moment is enough.
    """
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main and name in main.__dict__}
    try:
        if "__spec__" in saved:
            main.__spec__ = None
        if "__file__" in saved:
            del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


IDLE = -1
"""The value of a worker's ``busy`` marker between segments."""


def run(tasks: Any, results: Any, busy: Any = None) -> None:
    """A worker's loop: decode segments from ``tasks`` until ``None``; a bad video is reported, not raised.

    ``busy`` (a shared ``multiprocessing.Value``, optional) holds the job of the segment being decoded, else
    :data:`IDLE`. It is shared memory, written before decoding starts, so when this process dies (FFmpeg crashing
    on a damaged file, the out-of-memory killer) the parent still learns which video it was decoding; a message
    on the queue could be lost with the process."""
    while True:
        try:
            segment = tasks.get()
        except (EOFError, OSError):  # the parent went away
            return
        if segment is None:
            return
        if busy is not None:
            busy.value = segment.job
        try:
            decode_segment(segment, results.put)
        except Exception as error:  # reported to the parent, which records the video as failed and goes on
            results.put((FAILED, segment.job, _picklable(error)))
        finally:
            if busy is not None:
                busy.value = IDLE


def _picklable(error: Exception) -> Exception:
    """``error`` itself if it survives the queue's pickling (msjoe's errors do), else a RuntimeError naming it:
    a message that fails to pickle would be lost in the queue's feeder thread and the parent would wait forever."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


__all__ = [
    "FAILED",
    "FRAMES",
    "IDLE",
    "SEGMENT_DONE",
    "Segment",
    "count_frames",
    "decode_segment",
    "encode_jpegs",
    "run",
    "without_main_module",
]
