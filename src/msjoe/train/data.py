"""Training data: QA items -> :class:`~msjoe.train.examples.TrainExample` (features, queries, similarities).

:func:`prepare_examples` joins each QA item with its video's cached frame features (each video is indexed once,
however many items ask about it) and, for stage 1, with the frozen MLLM's queries and their similarity matrix::

    prepared = prepare_examples(read_qa_jsonl("train.jsonl"), encoder=encoder, cache=FeatureCache(),
                                queries=QueryWriter(mllm, k=16, cache_path="run/queries.jsonl"),
                                require_difficulty=True)
    prepared.examples        # list[TrainExample], ready for Stage1Trainer
    prepared.skipped         # list[SkippedItem]: missing / corrupt videos, items without answer or difficulty

Items that cannot be used are skipped, each with a warning naming the reason, and counted; a summary line follows.
Problems that would fail every item (the cache cannot be written, a model cannot run) raise instead.

Queries for stage 1 come from one of two sources: ``"question"`` (the question text is the single query: no MLLM
call, the cheapest start) or a :class:`QueryWriter` (the frozen MLLM writes up to 4 queries from ``K/2`` preview
frames with greedy decoding, exactly as at inference). Written queries are cached in an append-only JSONL file
(:class:`ReplyCache`), so a rerun or a second run on the same data asks the MLLM nothing. Stage 2 writes its own
queries in every rollout: pass ``queries=None`` for examples with features only.

Candidate frames are loaded with :func:`load_candidate_frames` (a candidate grid, an optional
:class:`~msjoe.frame_store.FrameStore`). The reply caches and cache-key helpers live in :mod:`msjoe.data.replies`
(``msjoe data calibrate`` shares them) and are re-exported here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from msjoe.cache import FeatureCache, FrameFeatures
from msjoe.checks import is_int
from msjoe.data.replies import ReplyCache, VideoFingerprints, describe_mllm, prompt_version, question_digest
from msjoe.data.schema import QAItem
from msjoe.errors import VideoError
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.index import index_video
from msjoe.limits import MAX_QUERIES
from msjoe.mllm import MLLM, GenerationConfig
from msjoe.mllm.prompts import PREVIEW_MAX_PIXELS
from msjoe.pipeline import load_frames, preview_indices, query_similarity, write_queries
from msjoe.progress import progress_bar
from msjoe.train.examples import TrainExample
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, VideoInfo

__all__ = [
    "PreparedData",
    "QueryWriter",
    "ReplyCache",
    "SkippedItem",
    "VideoFingerprints",
    "describe_mllm",
    "load_candidate_frames",
    "prepare_examples",
    "prompt_version",
    "question_digest",
]

logger = logging.getLogger(__name__)

QuerySource = Literal["question"]


# --------------------------------------------------------------------------------------------------------------
# Frames of an example
# --------------------------------------------------------------------------------------------------------------
def load_candidate_frames(
    video: str | Path,
    timestamps: Sequence[float] | np.ndarray,
    indices: Sequence[int] | torch.Tensor,
    max_pixels: int,
    *,
    fps: float,
    max_frames: int,
    frame_store: FrameStore | None = None,
    fingerprint: str | None = None,
    info: VideoInfo | None = None,
) -> np.ndarray:
    """The candidate frames ``indices`` of ``video`` (candidate times ``timestamps`` on the grid ``fps`` /
    ``max_frames``), uint8 ``[N, H, W, 3]`` sized for ``max_pixels``, in the order of ``indices``.

    Read from ``frame_store`` when it holds the video's grid, else decoded (:func:`msjoe.pipeline.load_frames`).
    Raises ``IndexError`` for an index outside ``[0, len(timestamps))`` and VideoError subclasses for a bad video.
    """
    times = np.asarray(timestamps, dtype=np.float64)
    positions = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    bad = [i for i in positions if not 0 <= i < len(times)]
    if bad:
        raise IndexError(f"candidate indices {bad} are outside [0, {len(times)}) for {video}")
    return load_frames(
        video,
        [float(times[i]) for i in positions],
        max_pixels,
        store=frame_store,
        fps=fps,
        max_frames=max_frames,
        fingerprint=fingerprint,
        info=info,
    )


# --------------------------------------------------------------------------------------------------------------
# Queries of the frozen MLLM (stage 1)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class QueryWriter:
    """Stage-1 queries written by the frozen MLLM, as at inference: the question, its options and ``K/2``
    low-resolution preview frames in, up to ``max_queries`` visual queries out, greedy decoding.

    Greedy decoding makes the queries a function of the item, so they are computed once and cached on disk
    (``cache_path``, a :class:`ReplyCache`) keyed by the item id, the video's content fingerprint, the model
    (:func:`describe_mllm`), the prompt version (:func:`prompt_version`), a digest of the question and options, and
    the preview settings below. A rerun asks the model nothing. When no query can be parsed from the reply, the
    question itself is the single query (as in :class:`msjoe.pipeline.VideoQA`); the record says so.

    Attributes:
        mllm: the frozen MLLM.
        k: the training budget K; the preview shows ``K/2`` uniformly spaced candidates (paper).
        cache_path: the JSONL cache of queries; ``None`` keeps them in memory only.
        max_queries: at most this many queries (paper: 4).
        preview_max_pixels: pixel budget of a preview frame (paper: about 32 visual tokens).
        max_new_tokens: generation cap of the query turn.
        model_id: names the model in cache keys; ``None`` uses :func:`describe_mllm`.
        also_read: other processes' query caches to read (never written; see :class:`ReplyCache`).
    """

    mllm: MLLM
    k: int
    cache_path: str | Path | None = None
    max_queries: int = MAX_QUERIES
    preview_max_pixels: int = PREVIEW_MAX_PIXELS
    max_new_tokens: int = 128
    model_id: str | None = None
    also_read: Sequence[str | Path] = ()
    calls: int = field(default=0, init=False)
    """Model calls made (cache misses)."""
    cache_hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not is_int(self.k) or self.k < 1:
            raise ValueError(f"QueryWriter.k must be a positive int (the training budget K), got {self.k!r}")
        if not 1 <= self.max_queries <= MAX_QUERIES:
            raise ValueError(f"QueryWriter.max_queries must be 1 to {MAX_QUERIES}, got {self.max_queries!r}")
        if self.preview_max_pixels < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"QueryWriter.preview_max_pixels and max_new_tokens must be positive, got "
                f"{self.preview_max_pixels!r} and {self.max_new_tokens!r}"
            )
        self._cache = ReplyCache(self.cache_path, also_read=self.also_read)
        self._model_name = self.model_id or describe_mllm(self.mllm)
        self._prompt = prompt_version("query")

    def queries(
        self, item: QAItem, features: FrameFeatures, video_fingerprint: str, frame_store: FrameStore | None = None
    ) -> tuple[str, ...]:
        """The queries for ``item`` (from the cache, else written by the model and cached).

        Raises VideoError subclasses if the preview frames cannot be decoded.
        """
        num_candidates = len(features.timestamps)
        previews = preview_indices(num_candidates, self.k)
        key = ReplyCache.key(
            {
                "id": item.id,
                "source": item.source,
                "question": question_digest(item),
                "video_fingerprint": video_fingerprint,
                "model": self._model_name,
                "prompt": self._prompt,
                "preview_timestamps": [round(float(features.timestamps[i]), 3) for i in previews],
                "preview_max_pixels": self.preview_max_pixels,
                "max_queries": self.max_queries,
                "max_new_tokens": self.max_new_tokens,
            }
        )
        record = self._cache.get(key)
        if record is not None:
            self.cache_hits += 1
            return tuple(record["queries"])

        preview_times = [float(features.timestamps[i]) for i in previews]
        frames = load_frames(
            item.video,
            preview_times,
            self.preview_max_pixels,
            store=frame_store,
            fps=features.fps,
            max_frames=features.max_frames,
            fingerprint=video_fingerprint,
            info=features.video_info,
        )
        written, reply = write_queries(
            self.mllm,
            item.question,
            item.options,
            list(frames),
            preview_times,
            max_queries=self.max_queries,
            preview_max_pixels=self.preview_max_pixels,
            generation=GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=0.0),
        )
        self.calls += 1
        record = {
            "id": item.id,
            "video_fingerprint": video_fingerprint,
            "model": self._model_name,
            "prompt": self._prompt,
            "queries": written or [item.question],
            "from_question": not written,
            "reply": reply,
        }
        self._cache.put(key, record)
        return tuple(record["queries"])


# --------------------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkippedItem:
    """A QA item :func:`prepare_examples` could not use, and why.

    ``kind`` groups reasons for counting: a VideoError class name (``"VideoNotFoundError"``,
    ``"CorruptVideoError"``, ...), ``"no_answer"``, ``"no_difficulty"`` or ``"too_few_frames"``.
    """

    id: str
    video: str
    reason: str
    kind: str


@dataclass
class PreparedData:
    """The outcome of :func:`prepare_examples`: every input item lands in ``examples`` or in ``skipped``."""

    examples: list[TrainExample] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    videos: int = 0
    """Distinct videos the usable items refer to (each indexed once)."""

    def skipped_counts(self) -> dict[str, int]:
        """How many items were skipped, by :attr:`SkippedItem.kind`."""
        return dict(Counter(s.kind for s in self.skipped))

    def summary(self) -> str:
        """One line: examples prepared, videos, and skipped items by kind."""
        line = f"{len(self.examples)} examples from {self.videos} videos"
        if self.skipped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped_counts().items()))
            line += f"; skipped {len(self.skipped)} items ({kinds})"
        return line


def prepare_examples(
    items: Sequence[QAItem],
    *,
    encoder: DualEncoder,
    cache: FeatureCache | None,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    queries: QuerySource | QueryWriter | None = "question",
    frame_store: FrameStore | None = None,
    require_difficulty: bool = False,
    min_frames: int = 1,
    progress: bool = False,
) -> PreparedData:
    """Join QA items with their videos' frame features (and, for stage 1, queries and similarities).

    Each distinct video is indexed once (:func:`msjoe.index.index_video`: cached features are read, missing ones
    computed and stored), and its :class:`~msjoe.cache.FrameFeatures` object is shared by all its items.

    Args:
        items: the QA items, e.g. from :func:`msjoe.data.read_qa_jsonl`.
        encoder: the frozen dual encoder (its image tower indexes videos, its text tower embeds queries).
        cache: feature cache; ``None`` computes features in memory (every run decodes every video again).
        fps, max_frames: the candidate grid (see :func:`msjoe.video.candidate_timestamps`).
        queries: ``"question"`` (the question is the single query), a :class:`QueryWriter` (the frozen MLLM's
            greedy queries, cached), or ``None`` (no queries and no ``sim``: stage 2 writes its own).
        frame_store: if given, indexing also stores every candidate frame as a JPEG (unless already stored), and
            preview frames are read from it: training loads frames for every rollout, and reading JPEGs is ~20x
            faster than seeking in the video.
        require_difficulty: skip items without a difficulty (stage 1's ``c``).
        min_frames: skip items whose video has fewer candidates (pass the training budget K: a sampler cannot
            draw K distinct frames out of fewer).
        progress: show a progress bar over the items.

    Items are skipped, with a warning each and a summary line, when they have no answer letter (they cannot be
    rewarded), no difficulty (with ``require_difficulty``), too few candidates, or a video that is missing,
    not a video, corrupt, truncated or undecodable (the :class:`~msjoe.errors.VideoError` class names the kind).
    Errors that would fail every item (:class:`~msjoe.errors.CacheError`, :class:`~msjoe.errors.ModelLoadError`)
    propagate.
    """
    if queries is not None and queries != "question" and not isinstance(queries, QueryWriter):
        raise ValueError(f"queries must be 'question', a QueryWriter or None, got {queries!r}")
    if not is_int(min_frames) or min_frames < 1:
        raise ValueError(f"min_frames must be a positive int, got {min_frames!r}")
    prepared = PreparedData()

    def skip(item: QAItem, kind: str, reason: str) -> None:
        logger.warning("skipping item %s (video %s): %s", item.id, item.video, reason)
        prepared.skipped.append(SkippedItem(item.id, item.video, reason, kind))

    # Group usable items by video, in first-appearance order, so each video is indexed once.
    by_video: dict[str, list[tuple[int, QAItem]]] = {}
    for position, item in enumerate(items):
        if item.answer is None:
            skip(item, "no_answer", "no answer letter: a rollout on it cannot be rewarded")
        elif require_difficulty and item.difficulty is None:
            skip(item, "no_difficulty", "no difficulty (stage 1 needs the base model's pass rate c)")
        else:
            by_video.setdefault(item.video_key, []).append((position, item))

    fingerprints = VideoFingerprints()
    examples: dict[int, TrainExample] = {}  # position in `items` -> example, to keep the input order
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("preparing examples", total=sum(len(group) for group in by_video.values()))
        for group in by_video.values():
            video = group[0][1].video
            try:
                features = index_video(video, encoder, cache, fps=fps, max_frames=max_frames, frame_store=frame_store)
                video_fingerprint = fingerprints(video)
            except VideoError as err:
                for _, item in group:
                    skip(item, type(err).__name__, f"{type(err).__name__}: {err}")
                bar.advance(task, len(group))
                continue
            if features.num_frames < min_frames:
                for _, item in group:
                    skip(item, "too_few_frames", f"{features.num_frames} candidate frames, fewer than {min_frames}")
                bar.advance(task, len(group))
                continue
            used = False
            for position, item in group:
                try:
                    example = _example(item, features, video_fingerprint, encoder, queries, frame_store)
                except VideoError as err:  # e.g. a truncated file that fails only at a late preview frame
                    skip(item, type(err).__name__, f"{type(err).__name__}: {err}")
                else:
                    examples[position] = example
                    used = True
                bar.advance(task)
            prepared.videos += used
    prepared.examples = [examples[n] for n in sorted(examples)]
    (logger.warning if prepared.skipped else logger.info)("prepared training data: %s", prepared.summary())
    return prepared


def _example(
    item: QAItem,
    features: FrameFeatures,
    video_fingerprint: str,
    encoder: DualEncoder,
    queries: QuerySource | QueryWriter | None,
    frame_store: FrameStore | None,
) -> TrainExample:
    if queries is None:
        return TrainExample(qa=item, features=features)
    if isinstance(queries, QueryWriter):
        texts = queries.queries(item, features, video_fingerprint, frame_store)
    else:
        texts = (item.question,)
    return TrainExample(qa=item, features=features, queries=texts, sim=query_similarity(encoder, texts, features))
