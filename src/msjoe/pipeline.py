"""The MSJoE inference flow (docs/architecture.md), one function per arrow, and :class:`VideoQA` that chains them.

```
video ─index─▶ candidate timestamps + frame embeddings (cached)
question + K/2 low-res preview frames ─MLLM─▶ up to 4 queries      (write_queries)
queries ─text tower─▶ [Nq, D];  S = cos(queries, frames)            (query_similarity)
S ─sampler─▶ K key frames, sorted by time                           (select_frames)
key frames + question + options ─MLLM─▶ reply ─parse─▶ letter       (answer_question)
```
Preview frames help the MLLM write grounded queries and are not shown again at answer time (paper).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch

from msjoe import video as video_io
from msjoe.cache import FeatureCache, FrameFeatures, fingerprint
from msjoe.checks import AT_LEAST_1, POSITIVE, Bounds, check_fields
from msjoe.defaults import DEFAULT_CLIP, DEFAULT_MLLM, DEFAULT_SAMPLER
from msjoe.errors import CacheError
from msjoe.features import DualEncoder, similarity
from msjoe.frame_store import DEFAULT_MAX_PIXELS, FrameStore, budget_frame_size
from msjoe.index import index_video
from msjoe.mllm import MLLM, GenerationConfig, load_mllm
from msjoe.mllm.parsing import AnswerParse, parse_answer, parse_queries
from msjoe.mllm.prompts import PREVIEW_MAX_PIXELS, answer_prompt, query_prompt
from msjoe.samplers import MAX_QUERIES, Sampler, available_samplers, get_sampler

if TYPE_CHECKING:
    from msjoe.explain import Explanation

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Settings of :class:`VideoQA`; every field has the paper's value or ours, documented.

    Attributes:
        k: key frames shown to the MLLM at answer time (paper's main table: 32 and 64).
        sampler: registered sampler name. ``usampler`` needs ``sampler_checkpoint``; without trained weights
            the default is BOLT, the strongest training-free rule.
        sampler_checkpoint: folder written by ``USampler.save_pretrained``.
        fps: candidate frames per second (paper: 1).
        max_frames: cap on candidates, uniform subsampling beyond (ours: 4096).
        max_queries: queries the MLLM may write (paper: 4).
        preview_max_pixels: pixel budget of a preview frame (paper: ~32 visual tokens).
        answer_max_pixels: pixel budget of a key frame at answer time (448² = 256 Qwen2.5-VL tokens).
        query_generation / answer_generation: sampling settings of the two MLLM turns (greedy by default).
        seed: seeds stochastic samplers so answers are reproducible.
        store_frames: keep every candidate frame as a JPEG at ``answer_max_pixels``, made in the indexing pass (on
            by default: about 25-130 MB per hour of video, a few per cent more indexing time), so questions about an
            indexed video read their preview and key frames ~20x faster than seeking in the video: everything but
            the MLLM then takes tens of milliseconds (bench/RESULTS.md). JPEG at quality 90 is lossy; without the
            store (``False``) frames are decoded exactly. A cache folder that cannot be written is used as it is
            (frames already stored are read, others decoded).
    """

    k: Annotated[int, AT_LEAST_1] = 32
    sampler: str = DEFAULT_SAMPLER
    sampler_checkpoint: str | None = None
    fps: Annotated[float, POSITIVE] = video_io.DEFAULT_FPS
    max_frames: Annotated[int, AT_LEAST_1] = video_io.DEFAULT_MAX_FRAMES
    max_queries: Annotated[int, Bounds(1, MAX_QUERIES)] = MAX_QUERIES
    preview_max_pixels: Annotated[int, AT_LEAST_1] = PREVIEW_MAX_PIXELS
    answer_max_pixels: Annotated[int, AT_LEAST_1] = DEFAULT_MAX_PIXELS
    query_generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=128))
    answer_generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=32))
    seed: int = 0
    store_frames: bool = True

    def __post_init__(self) -> None:
        # Fail before any model is loaded: a bad setting should not cost minutes of loading a 7B model.
        check_fields(self)  # every field's type and range, from its annotation
        if self.sampler not in available_samplers():
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(available_samplers())}")
        if (self.sampler == "usampler") != (self.sampler_checkpoint is not None):
            raise ValueError(
                "the U-Sampler needs trained weights: pass a sampler checkpoint folder"
                if self.sampler == "usampler"
                else f"sampler {self.sampler!r} takes no checkpoint"
            )


@dataclass
class Answer:
    """Everything one question produced: the answer, and which frames were used and why."""

    letter: str | None
    status: str  # "ok", "ambiguous", "unparsed" (see msjoe.mllm.parsing) or "free-form" without options
    reply: str
    queries: list[str]
    query_reply: str | None
    queries_from_question: bool
    candidate_timestamps: np.ndarray
    similarity: torch.Tensor | None
    preview_timestamps: list[float]
    chosen_indices: list[int]
    chosen_timestamps: list[float]
    timings: dict[str, float]
    requested_k: int
    """The frame budget asked for; :attr:`k` is what was used (fewer when the video has fewer candidates)."""
    probabilities: torch.Tensor | None = None
    """The sampler's distribution over the T candidates, for samplers that have one (see ``Sampler.probabilities``)."""
    # What was asked, and by which setup: lets an Answer explain itself on its own (``explain``).
    video: str | None = None
    question: str | None = None
    options: list[str] = field(default_factory=list)
    sampler: str | None = None
    models: dict[str, str] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """How many key frames the MLLM saw: the budget, or every candidate of a video that has fewer."""
        return len(self.chosen_indices)

    def explain(self, path: str | Path | None = None) -> Explanation:
        """The explain view of this answer (:mod:`msjoe.explain`): queries, similarity curves, the sampler's
        probabilities, chosen and preview frames, timings. With ``path`` it is also written there, as a
        self-contained ``.html`` page or a ``.png`` figure (by the suffix)."""
        from msjoe.explain import Explanation

        has_similarity = self.similarity is not None
        explanation = Explanation(
            candidate_timestamps=np.asarray(self.candidate_timestamps),
            chosen_indices=list(self.chosen_indices),
            video=self.video,
            queries=list(self.queries),
            similarity=self.similarity.float().numpy() if has_similarity else None,
            probabilities=None if self.probabilities is None else self.probabilities.double().numpy(),
            preview_timestamps=list(self.preview_timestamps),
            question=self.question,
            options=list(self.options),
            reply=self.reply,
            letter=self.letter,
            status=self.status,
            queries_from_question=self.queries_from_question,
            query_reply=self.query_reply,
            timings=dict(self.timings),
            settings={
                **self.models,
                "sampler": self.sampler,
                "k": self.k if self.k == self.requested_k else f"{self.k} (-k {self.requested_k} asked)",
            },
        )
        if path is not None:
            explanation.save(path)
        return explanation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (times rounded to the microsecond, the similarity matrix and probabilities as nested
        lists, rounded)."""
        return {
            "video": self.video,
            "question": self.question,
            "options": self.options,
            "sampler": self.sampler,
            "k": self.k,
            "requested_k": self.requested_k,
            "letter": self.letter,
            "status": self.status,
            "reply": self.reply,
            "queries": self.queries,
            "query_reply": self.query_reply,
            "queries_from_question": self.queries_from_question,
            "preview_timestamps": [video_io.round_seconds(t) for t in self.preview_timestamps],
            "chosen_indices": self.chosen_indices,
            "chosen_timestamps": [video_io.round_seconds(t) for t in self.chosen_timestamps],
            "num_candidates": len(self.candidate_timestamps),
            "similarity": None if self.similarity is None else np.round(self.similarity.numpy(), 4).tolist(),
            # Probabilities span orders of magnitude (1/T is 3e-4 for an hour): rounded to significant digits.
            "probabilities": None
            if self.probabilities is None
            else [float(f"{p:.4g}") for p in self.probabilities.tolist()],
            "timings": self.timings,
            "models": self.models,
        }


# --- one function per arrow ---------------------------------------------------------------------------------


def build_sampler(name: str, *, logit_scale: float | None = None, checkpoint: str | Path | None = None) -> Sampler:
    """Instantiate a registered sampler with what the pipeline knows (the encoder's logit scale, weights)."""
    if name == "usampler":
        if checkpoint is None:
            raise ValueError("the U-Sampler needs trained weights: pass a sampler checkpoint folder")
        sampler = get_sampler(name, checkpoint=checkpoint)
        if not getattr(sampler, "is_trained", True):
            logger.warning("U-Sampler checkpoint %s was never trained: its choices are close to top-k", checkpoint)
        return sampler
    if checkpoint is not None:
        raise ValueError(f"sampler {name!r} takes no checkpoint")
    if name == "qframe" and logit_scale is not None:
        return get_sampler(name, logit_scale=logit_scale)
    return get_sampler(name)


def describe_mllm(mllm: MLLM) -> str:
    """A short name of an MLLM backend: its model id or folder, or the server's URL."""
    for attribute in ("model_id", "base_url"):
        value = getattr(mllm, attribute, None)
        if isinstance(value, str) and value:
            return value
    return mllm.name


def preview_indices(num_candidates: int, k: int) -> list[int]:
    """K/2 (at least one) evenly spaced candidates: the low-resolution frames the MLLM sees when writing queries."""
    n = min(max(k // 2, 1), num_candidates)
    return [int((i + 0.5) * num_candidates / n) for i in range(n)]


def write_queries(
    mllm: MLLM,
    question: str,
    options: Sequence[str] | None,
    frames: Sequence[np.ndarray],
    timestamps: Sequence[float],
    *,
    max_queries: int = MAX_QUERIES,
    preview_max_pixels: int = PREVIEW_MAX_PIXELS,
    generation: GenerationConfig | None = None,
) -> tuple[list[str], str]:
    """Ask the MLLM for up to ``max_queries`` visual queries; returns (parsed queries, raw reply)."""
    messages = query_prompt(
        question,
        list(options) if options else None,
        list(frames),
        list(timestamps),
        max_queries=max_queries,
        preview_max_pixels=preview_max_pixels,
    )
    reply = mllm.chat(messages, generation)
    return parse_queries(reply, max_queries=max_queries), reply


def check_queries(queries: Sequence[str]) -> list[str]:
    """The queries as a list, after checking there are 1 to :data:`MAX_QUERIES` of them and none is empty.

    An empty or whitespace query would still be encoded (into the text tower's embedding of nothing) and steer
    the selection toward whatever frames resemble it, so it is an error rather than something to drop quietly.

    Raises:
        ValueError: not a list of strings, the wrong number of queries, or an empty one (numbered from 1).
    """
    if isinstance(queries, str) or not all(isinstance(query, str) for query in queries):
        raise ValueError(f"queries must be a list of strings, got {queries!r}")
    queries = list(queries)
    if not 1 <= len(queries) <= MAX_QUERIES:
        raise ValueError(f"give 1 to {MAX_QUERIES} queries, got {len(queries)}")
    for number, query in enumerate(queries, start=1):
        if not query.strip():
            raise ValueError(f"query {number} is empty ({query!r}): a query describes what to look for in the frames")
    return queries


def query_similarity(encoder: DualEncoder, queries: Sequence[str], features: FrameFeatures) -> torch.Tensor:
    """S [Nq, T]: cosine similarity of each query to each cached candidate frame (see :func:`check_queries`)."""
    return similarity(encoder.encode_texts(check_queries(queries)), features.embeddings)


def select_frames(sampler: Sampler, sim: torch.Tensor, k: int, *, seed: int = 0) -> list[int]:
    """K candidate indices in time order (seeded, so stochastic samplers are reproducible).

    A budget above the number of candidates T gives all T, with a warning: the caller reports ``len(result)``,
    not ``k``, as the number of key frames.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = sampler.select(sim, k, generator=generator).tolist()
    if len(chosen) < k:
        logger.warning(
            "asked for %d key frames but the video has only %d candidate frames: using all %d "
            "(a higher fps gives more candidates)",
            k,
            len(chosen),
            len(chosen),
        )
    return chosen


def answer_question(
    mllm: MLLM,
    question: str,
    options: Sequence[str] | None,
    frames: Sequence[np.ndarray],
    timestamps: Sequence[float],
    *,
    frame_max_pixels: int | None = None,
    generation: GenerationConfig | None = None,
) -> tuple[AnswerParse | None, str]:
    """Show the key frames (time-ordered, timestamped) with the question; returns (parsed answer, raw reply).

    A free-form question (no options) has no letter to parse: the parse is None and the reply is the answer.
    """
    opts = list(options) if options else None
    messages = answer_prompt(question, opts, list(frames), list(timestamps), frame_max_pixels=frame_max_pixels)
    reply = mllm.chat(messages, generation)
    return (parse_answer(reply, opts) if opts else None), reply


def load_frames(
    path: str | Path,
    timestamps: Sequence[float],
    max_pixels: int,
    *,
    store: FrameStore | None = None,
    fps: float = video_io.DEFAULT_FPS,
    max_frames: int = video_io.DEFAULT_MAX_FRAMES,
    fingerprint: str | None = None,
    info: video_io.VideoInfo | None = None,
) -> np.ndarray:
    """Candidate frames at ``timestamps`` sized for ``max_pixels``: from the frame store when it holds them,
    else decoded from the video straight to the size the MLLM will use (no full-HD frame it would shrink anyway).
    ``info`` is the video's probe result when the caller has it (the feature cache keeps one), saving a probe.
    """
    if store is not None:
        frames = store.read(path, timestamps, max_pixels, fps=fps, max_frames=max_frames, fingerprint=fingerprint)
        if frames is not None:
            return frames
    if info is None:
        info = video_io.probe(path)
    return video_io.decode_frames(path, timestamps, budget_frame_size(info.height, info.width, max_pixels))


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# --- the chain ----------------------------------------------------------------------------------------------


class VideoQA:
    """Answer questions about long videos with K query-selected key frames.

    >>> qa = VideoQA.from_pretrained(mllm="Qwen/Qwen2.5-VL-7B-Instruct", clip="openai/clip-vit-large-patch14")
    >>> answer = qa.ask("talk.mp4", "What does the speaker hold?", ["A pen", "A cup", "A phone", "Nothing"])
    >>> answer.letter, answer.chosen_timestamps
    """

    def __init__(
        self,
        encoder: DualEncoder,
        mllm: MLLM,
        cache: FeatureCache | None = None,
        config: PipelineConfig | None = None,
    ) -> None:
        self.encoder = encoder
        self.mllm = mllm
        self.cache = cache if cache is not None else FeatureCache()
        self.config = config or PipelineConfig()
        # Existing entries are always read (cheap); new ones are built only with ``config.store_frames``.
        self.frame_store = FrameStore.for_cache(self.cache, max_pixels=self.config.answer_max_pixels)
        self._samplers: dict[tuple[str, str | None], Sampler] = {}
        # Which models answered, for explain views and service listings.
        self.model_names = {"mllm": describe_mllm(mllm), "clip": encoder.model_id}
        self._warned_read_only = False

    @classmethod
    def from_pretrained(
        cls,
        mllm: str = DEFAULT_MLLM,
        clip: str = DEFAULT_CLIP,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        config: PipelineConfig | None = None,
        mllm_options: dict[str, Any] | None = None,
    ) -> VideoQA:
        """Load the encoder and the MLLM (Hugging Face ids, local folders, or an http(s) URL for the MLLM)."""
        encoder = DualEncoder.from_pretrained(clip, device=device)
        options = {"device": device, "dtype": dtype} if not mllm.startswith(("http://", "https://")) else {}
        backend = load_mllm(mllm, **{**options, **(mllm_options or {})})
        qa = cls(encoder, backend, FeatureCache(cache_dir), config)
        qa.model_names = {"mllm": mllm, "clip": str(clip)}  # as the user named them (the encoder keys by full path)
        return qa

    def _can_store_frames(self) -> bool:
        """Whether new frame store entries can be written (a read-only cache still serves those it holds)."""
        try:
            self.frame_store.ensure_writable()
            return True
        except CacheError as error:
            if not self._warned_read_only:
                logger.warning("frames are not stored for later questions: %s", error.problem)
                self._warned_read_only = True
            return False

    def sampler(self, name: str, checkpoint: str | None = None) -> Sampler:
        key = (name, checkpoint)
        if key not in self._samplers:
            self._samplers[key] = build_sampler(name, logit_scale=self.encoder.logit_scale, checkpoint=checkpoint)
        return self._samplers[key]

    def ask(
        self,
        video: str | Path,
        question: str,
        options: Sequence[str] | None = None,
        *,
        k: int | None = None,
        sampler: str | None = None,
        sampler_checkpoint: str | None = None,
    ) -> Answer:
        """Answer ``question`` about ``video`` (multiple choice when ``options`` are given, free-form otherwise)."""
        cfg = self.config
        k = cfg.k if k is None else k
        sampler_name = sampler or cfg.sampler
        chosen_sampler = self.sampler(sampler_name, sampler_checkpoint or cfg.sampler_checkpoint)
        timings: dict[str, float] = {}
        path = Path(video)

        with _timed(timings, "index"):
            features = index_video(
                path,
                self.encoder,
                self.cache,
                fps=cfg.fps,
                max_frames=cfg.max_frames,
                frame_store=self.frame_store if cfg.store_frames and self._can_store_frames() else None,
            )
            frame_source = {
                "store": self.frame_store,
                "fps": cfg.fps,
                "max_frames": cfg.max_frames,
                "fingerprint": fingerprint(path),
                # The cached probe result saves probing the video again for the preview and the key frames.
                "info": features.video_info,
            }
        candidates = np.asarray(features.timestamps, dtype=np.float64)

        queries: list[str] = []
        query_reply: str | None = None
        preview_ts: list[float] = []
        sim: torch.Tensor | None = None
        probabilities: torch.Tensor | None = None
        if chosen_sampler.needs_queries:
            preview_ts = [float(candidates[i]) for i in preview_indices(len(candidates), k)]
            with _timed(timings, "decode_preview"):
                preview = load_frames(path, preview_ts, cfg.preview_max_pixels, **frame_source)
            with _timed(timings, "query_reasoning"):
                queries, query_reply = write_queries(
                    self.mllm,
                    question,
                    options,
                    list(preview),
                    preview_ts,
                    max_queries=cfg.max_queries,
                    preview_max_pixels=cfg.preview_max_pixels,
                    generation=cfg.query_generation,
                )
            queries_from_question = not queries
            if queries_from_question:  # ours: no parseable query → the question itself is the single query
                queries = [question]
            with _timed(timings, "similarity"):
                sim = query_similarity(self.encoder, queries, features)
            scores = sim
        else:
            queries_from_question = False
            scores = torch.zeros(1, len(candidates))
        with _timed(timings, "selection"):
            chosen = select_frames(chosen_sampler, scores, k, seed=cfg.seed)
            if sim is not None:
                probabilities = chosen_sampler.probabilities(sim)
        chosen_ts = [float(candidates[i]) for i in chosen]
        with _timed(timings, "decode_keyframes"):
            frames = load_frames(path, chosen_ts, cfg.answer_max_pixels, **frame_source)
        with _timed(timings, "answer"):
            parsed, reply = answer_question(
                self.mllm,
                question,
                options,
                list(frames),
                chosen_ts,
                frame_max_pixels=cfg.answer_max_pixels,
                generation=cfg.answer_generation,
            )
        return Answer(
            letter=parsed.letter if parsed else None,
            status=parsed.status if parsed else "free-form",
            reply=reply,
            queries=queries,
            query_reply=query_reply,
            queries_from_question=queries_from_question,
            candidate_timestamps=candidates,
            similarity=sim,
            preview_timestamps=preview_ts,
            chosen_indices=chosen,
            chosen_timestamps=chosen_ts,
            timings=timings,
            requested_k=k,
            probabilities=probabilities,
            video=str(video),
            question=question,
            options=list(options or []),
            sampler=sampler_name,
            models=dict(self.model_names),
        )
