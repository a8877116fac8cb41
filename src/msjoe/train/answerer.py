"""The frozen MLLM as stage 1's answerer, and the difficulty ``c`` of training items.

:class:`MLLMAnswerer` implements :class:`msjoe.train.stage1.Answerer` over :class:`~msjoe.train.examples.TrainExample`:
it shows the MLLM the chosen candidate frames with the question (the answer turn of
:func:`msjoe.pipeline.answer_question`), parses the option letter and compares it with the gold one. With greedy
decoding the answer to a given (item, frame set) never changes, so it is cached on disk: a sampler that draws the
same frames again (common once it concentrates on the evidence) costs a dictionary lookup instead of a forward
pass of the MLLM.

:func:`estimate_difficulty` measures an item's ``c``: the MLLM's pass rate with K uniformly spaced frames (paper);
:func:`fill_difficulty` does it for a whole QA list and writes a new QA JSONL with the ``difficulty`` field set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msjoe.checks import is_int
from msjoe.data.replies import ReplyCache, VideoFingerprints, answer_key, describe_mllm, prompt_version
from msjoe.data.schema import QAItem
from msjoe.frame_store import DEFAULT_MAX_PIXELS, FrameStore
from msjoe.mllm import MLLM, GenerationConfig
from msjoe.mllm.base import require_option_probabilities
from msjoe.mllm.parsing import parse_answer
from msjoe.mllm.prompts import answer_prompt, option_letters
from msjoe.samplers.uniform import uniform_indices
from msjoe.train.data import SkippedItem, load_candidate_frames
from msjoe.train.examples import TrainExample
from msjoe.train.stage1 import ANSWER_REWARDS, AnswerReward
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES

__all__ = [
    "AnswerOutcome",
    "AnswererStats",
    "DifficultyReport",
    "MLLMAnswerer",
    "estimate_difficulty",
    "fill_difficulty",
    "uniform_pass_rate",
]

logger = logging.getLogger(__name__)

DEFAULT_ANSWER_GENERATION = GenerationConfig(max_new_tokens=32)
"""Greedy, 32 new tokens: the answer turn asks for a letter only (as :class:`msjoe.pipeline.PipelineConfig`)."""


@dataclass(frozen=True)
class AnswerOutcome:
    """One answer: the parsed letter (None when the reply has no usable letter), the parse status, the reply."""

    letter: str | None
    status: str
    """``"ok"``, ``"ambiguous"`` or ``"unparsed"`` (see :class:`msjoe.mllm.parsing.AnswerParse`)."""
    reply: str
    correct: bool
    cached: bool
    """Read from the cache (no model call)."""
    gold_probability: float | None = None
    """With ``reward="gold_probability"``: the model's probability of the gold letter (renormalised over the option
    letters); ``letter`` is then the most probable letter and ``reply`` is empty (nothing is decoded)."""

    @property
    def verdict(self) -> bool | float:
        """What the answer is worth to the reward: :attr:`gold_probability` when scored, else :attr:`correct`."""
        return self.correct if self.gold_probability is None else self.gold_probability


@dataclass
class AnswererStats:
    """Running counts of an :class:`MLLMAnswerer` (for logs; saved by :meth:`MLLMAnswerer.state_dict`)."""

    answers: int = 0
    """Answers given (cache hits included)."""
    cache_hits: int = 0
    model_calls: int = 0
    """Cache misses, or every answer when sampling."""
    correct: int = 0
    unparsed: int = 0
    """Replies without a usable letter (unparsed or ambiguous): counted as wrong."""

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.answers if self.answers else 0.0


class MLLMAnswerer:
    """Stage 1's frozen answerer: ``answer_correct(example, chosen_indices)`` asks the MLLM about the chosen frames.

    Args:
        mllm: the frozen MLLM (any backend).
        frame_max_pixels: pixel budget of each frame shown (the inference setting, e.g. 448²).
        frame_store: read frames from this store when it holds the video (else they are decoded).
        cache_path: JSONL file of cached answers (greedy decoding only); ``None`` caches in memory for this run.
        generation: decoding of the answer turn; greedy (temperature 0) with 32 new tokens by default.
        model_id: names the model in cache keys; ``None`` uses :func:`msjoe.train.data.describe_mllm`.
        reward: ``"correct"``: :meth:`answer_correct` decodes an answer and returns whether it is the gold letter.
            ``"gold_probability"``: it returns the probability of the gold letter as the first reply token
            (:meth:`msjoe.mllm.MLLM.option_probabilities`; one forward pass, no decoding, cached like greedy
            answers, the generation settings unused). ``Stage1Config.answer_reward`` chooses it for
            ``msjoe train stage1``.
        batch_size: uncached answers asked of the backend together by :meth:`answer_many` (memory: one prefill of
            this many answer turns of K frames).

    Caching (greedy only). An answer is keyed by the item (id, and a digest of its question and options), the
    video's content fingerprint, the chosen frames (their timestamps, sorted), the model, ``frame_max_pixels``,
    ``max_new_tokens`` and the answer prompt's version; each new answer is appended to ``cache_path`` at once
    (:class:`~msjoe.train.data.ReplyCache`: reloaded on start, damaged lines skipped with a warning). With greedy
    decoding the reply is a function of these inputs, so the same draw is never asked twice.

    With sampling (``temperature > 0``) nothing is cached: each answer must be a fresh draw from the model's answer
    distribution, whose expectation is the success probability REINFORCE estimates; replaying a cached draw would
    turn one random outcome into a fixed reward for that frame set. Sampled answers are seeded
    ``generation.seed + n`` for the n-th sampled answer (:meth:`state_dict` keeps ``n``, so a resumed run draws the
    same answers); with ``generation.seed=None`` the backend's global RNG is used.
    """

    def __init__(
        self,
        mllm: MLLM,
        *,
        frame_max_pixels: int = DEFAULT_MAX_PIXELS,
        frame_store: FrameStore | None = None,
        cache_path: str | Path | None = None,
        generation: GenerationConfig | None = None,
        model_id: str | None = None,
        reward: AnswerReward = "correct",
        batch_size: int = 8,
    ) -> None:
        if not is_int(frame_max_pixels) or frame_max_pixels < 1:
            raise ValueError(f"frame_max_pixels must be a positive int, got {frame_max_pixels!r}")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if reward not in ANSWER_REWARDS:
            raise ValueError(f"reward must be one of {ANSWER_REWARDS}, got {reward!r}")
        if reward == "gold_probability":
            require_option_probabilities(mllm, "reward 'gold_probability'")
        self.mllm = mllm
        self.frame_max_pixels = frame_max_pixels
        self.frame_store = frame_store
        self.reward: AnswerReward = reward
        self.batch_size = batch_size
        self.generation = generation or DEFAULT_ANSWER_GENERATION
        # Option probabilities are a function of the inputs, whatever the decoding settings: always cached.
        self.sampling = self.generation.temperature > 0 and reward == "correct"
        self.stats = AnswererStats()
        self.sampled_answers = 0
        self.model_name = model_id or describe_mllm(mllm)
        self._prompt = prompt_version("answer")
        self._fingerprints = VideoFingerprints()
        if cache_path is not None and self.sampling:
            logger.warning(
                "answer cache %s is not used: answers are sampled (temperature %g), each must be a fresh draw",
                cache_path,
                self.generation.temperature,
            )
        # Sampled answers are never looked up (see the class note); greedy ones go to the file, or to memory.
        self._cache = ReplyCache(None if self.sampling else cache_path)

    # --- the Answerer protocol ----------------------------------------------------------------------------------
    def answer_correct(self, item: TrainExample, chosen_indices: torch.Tensor | Sequence[int]) -> bool | float:
        """Answer ``item``'s question from its candidate frames ``chosen_indices``: True if the letter is the gold
        (``reward="correct"``), or the gold letter's probability (``reward="gold_probability"``)."""
        return self.answer(item, chosen_indices).verdict

    def answer(
        self, example: TrainExample, chosen_indices: torch.Tensor | Sequence[int], *, seed: int | None = None
    ) -> AnswerOutcome:
        """The full outcome of answering ``example`` from ``chosen_indices`` (see :meth:`answer_frames`)."""
        return self._outcomes([self._example_request(example, chosen_indices)], seed=seed)[0]

    def answer_frames(
        self,
        qa: QAItem,
        candidate_timestamps: Sequence[float] | np.ndarray,
        chosen_indices: torch.Tensor | Sequence[int],
        *,
        fps: float,
        max_frames: int,
        seed: int | None = None,
    ) -> AnswerOutcome:
        """Answer ``qa`` from the candidates ``chosen_indices`` of the grid ``candidate_timestamps`` (``fps``,
        ``max_frames``); frames are shown in time order whatever the order of ``chosen_indices``.

        ``seed`` overrides the seed of a sampled answer (ignored when greedy). Raises ``ValueError`` if ``qa`` has
        no gold letter, ``IndexError`` for an index outside the grid, VideoError subclasses for a bad video.
        """
        request = self._request(qa, candidate_timestamps, chosen_indices, fps, max_frames)
        return self._outcomes([request], seed=seed)[0]

    def answer_many(self, requests: Sequence[tuple[TrainExample, torch.Tensor | Sequence[int]]]) -> list[bool | float]:
        """:meth:`answer_correct` of each ``(example, chosen_indices)`` pair, in order, asking the model for the
        uncached ones together: ``batch_size`` chats per call of the backend's ``option_probabilities_many`` or
        ``chat_many`` (one left-padded forward pass on the transformers backend; concurrent requests over HTTP).
        Sampled answers are asked one at a time, in order, so their seeds follow :meth:`answer`'s sequence."""
        prepared = [self._example_request(example, chosen) for example, chosen in requests]
        return [outcome.verdict for outcome in self._outcomes(prepared)]

    def _example_request(self, example: TrainExample, chosen_indices: torch.Tensor | Sequence[int]) -> _Request:
        features = example.features
        return self._request(example.qa, features.timestamps, chosen_indices, features.fps, features.max_frames)

    def _request(
        self,
        qa: QAItem,
        candidate_timestamps: Sequence[float] | np.ndarray,
        chosen_indices: torch.Tensor | Sequence[int],
        fps: float,
        max_frames: int,
    ) -> _Request:
        if qa.answer is None:
            raise ValueError(f"item {qa.id!r} has no gold answer letter: its answers cannot be scored")
        indices = sorted({int(i) for i in (_as_list(chosen_indices))})
        if not indices:
            raise ValueError(f"no frames chosen for item {qa.id!r}")
        times = np.asarray(candidate_timestamps, dtype=np.float64)
        if indices[0] < 0 or indices[-1] >= len(times):
            raise IndexError(f"candidate indices {indices} are outside [0, {len(times)}) for item {qa.id!r}")
        fingerprint = self._fingerprints(qa.video)
        key = None if self.sampling else self._key(qa, fingerprint, [float(times[i]) for i in indices])
        return _Request(qa, times, indices, fps, max_frames, fingerprint, key)

    def _outcomes(self, requests: Sequence[_Request], seed: int | None = None) -> list[AnswerOutcome]:
        """The outcome of each request: from the cache, or asked (uncached ones together, ``batch_size`` at a time;
        the same frames twice are asked once)."""
        records: dict[int, dict[str, Any]] = {}
        cached: set[int] = set()
        to_ask: dict[str, list[int]] = {}  # key -> the requests it answers (the first one is asked)
        for number, request in enumerate(requests):
            record = None if request.key is None else self._cache.get(request.key)
            if record is not None:
                records[number] = record
                cached.add(number)
            elif request.key is None:  # sampled: asked now, in order, so the seeds follow the sequence
                records[number] = self._ask([request], seed)[0]
            else:
                to_ask.setdefault(request.key, []).append(number)
        pending = list(to_ask.values())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            for numbers, record in zip(chunk, self._ask([requests[n[0]] for n in chunk]), strict=True):
                self._cache.put(requests[numbers[0]].key, record)
                records.update(dict.fromkeys(numbers, record))
                cached.update(numbers[1:])  # what a one-at-a-time run would have read from the cache
        outcomes = []
        for number, request in enumerate(requests):
            record, qa = records[number], request.qa
            correct = record["letter"] is not None and record["letter"] == qa.answer
            self.stats.answers += 1
            self.stats.cache_hits += number in cached
            self.stats.correct += correct
            self.stats.unparsed += record["letter"] is None
            probabilities = record.get("probabilities")
            gold = None if probabilities is None else float(probabilities.get(qa.answer, 0.0))
            outcomes.append(
                AnswerOutcome(record["letter"], record["status"], record["reply"], correct, number in cached, gold)
            )
        return outcomes

    # --- resuming ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The sampled-answer counter (the seed of the next sampled answer) and the running stats."""
        return {"sampled_answers": self.sampled_answers, "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampled_answers = int(state["sampled_answers"])
        self.stats = AnswererStats(**state["stats"])

    # --- internals --------------------------------------------------------------------------------------------
    def _key(self, qa: QAItem, video_fingerprint: str, chosen_times: list[float]) -> str:
        return answer_key(
            qa,
            video_fingerprint=video_fingerprint,
            chosen_timestamps=chosen_times,
            model=self.model_name,
            frame_max_pixels=self.frame_max_pixels,
            # nothing is decoded when scoring options: the decoding settings must not split the cache
            max_new_tokens=0 if self.reward == "gold_probability" else self.generation.max_new_tokens,
            prompt=self._prompt,
            scoring="option_probabilities" if self.reward == "gold_probability" else None,
        )

    def _ask(self, requests: Sequence[_Request], seed: int | None = None) -> list[dict[str, Any]]:
        """Ask the model about ``requests`` in one backend call (one request when sampling); the cache records."""
        shown = [[float(request.times[i]) for i in request.indices] for request in requests]
        chats = [
            answer_prompt(
                request.qa.question,
                list(request.qa.options),
                list(self._frames(request)),
                times,
                frame_max_pixels=self.frame_max_pixels,
            )
            for request, times in zip(requests, shown, strict=True)
        ]
        self.stats.model_calls += len(requests)
        records = [
            {
                "id": request.qa.id,
                "video_fingerprint": request.fingerprint,
                "indices": request.indices,
                "model": self.model_name,
                "frame_max_pixels": self.frame_max_pixels,
                "prompt": self._prompt,
            }
            for request in requests
        ]
        if self.reward == "gold_probability":
            letters = [option_letters(len(request.qa.options)) for request in requests]
            for record, scores in zip(records, self.mllm.option_probabilities_many(chats, letters), strict=True):
                best = max(scores.probabilities, key=scores.probabilities.__getitem__)
                record |= {"letter": best, "status": "ok", "reply": "", "probabilities": scores.probabilities,
                           "letter_mass": scores.letter_mass}  # fmt: skip
            return records
        generation = self.generation
        if self.sampling:
            if seed is None and generation.seed is not None:
                seed = generation.seed + self.sampled_answers
            generation = replace(generation, seed=seed)
            self.sampled_answers += 1
        replies = self.mllm.chat_many(chats, generation) if len(chats) > 1 else [self.mllm.chat(chats[0], generation)]
        for record, request, reply in zip(records, requests, replies, strict=True):
            parse = parse_answer(reply, list(request.qa.options))
            letter = parse.letter if parse.ok else None
            if letter is None:
                logger.debug(
                    "item %s: no usable letter in the reply (%s): %r", request.qa.id, parse.status, reply[:200]
                )
            record |= {"letter": letter, "status": parse.status, "reply": reply}
        return records

    def _frames(self, request: _Request) -> np.ndarray:
        return load_candidate_frames(
            request.qa.video,
            request.times,
            request.indices,
            self.frame_max_pixels,
            fps=request.fps,
            max_frames=request.max_frames,
            frame_store=self.frame_store,
            fingerprint=request.fingerprint,
        )


@dataclass(frozen=True)
class _Request:
    """One answer to give: the item, its candidate grid, the chosen indices (sorted), the video's fingerprint and
    the cache key (None when sampling)."""

    qa: QAItem
    times: np.ndarray
    indices: list[int]
    fps: float
    max_frames: int
    fingerprint: str
    key: str | None


def _as_list(indices: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(indices, torch.Tensor):
        if indices.dim() != 1:
            raise ValueError(f"chosen_indices must be 1-D, got shape {tuple(indices.shape)}")
        return [int(i) for i in indices.tolist()]
    return [int(i) for i in indices]


# --------------------------------------------------------------------------------------------------------------
# Difficulty: the pass rate with uniform frames
# --------------------------------------------------------------------------------------------------------------
def uniform_pass_rate(
    answerer: MLLMAnswerer,
    qa: QAItem,
    candidate_timestamps: Sequence[float] | np.ndarray,
    *,
    k: int,
    samples: int = 1,
    fps: float,
    max_frames: int,
) -> float:
    """The fraction of correct answers to ``qa`` from ``k`` uniformly spaced candidates (the item's ``c``).

    Greedy decoding answers the same way every time, so one answer is the exact pass rate (``samples`` is not
    used). With sampling, the mean over ``samples`` answers seeded ``seed + 0 .. seed + samples - 1``
    (``seed = answerer.generation.seed``, 0 if unset), so the estimate is reproducible.
    """
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not is_int(samples) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    chosen = uniform_indices(len(candidate_timestamps), k).tolist()
    if not answerer.sampling:
        outcome = answerer.answer_frames(qa, candidate_timestamps, chosen, fps=fps, max_frames=max_frames)
        return float(outcome.correct)
    base = answerer.generation.seed or 0
    hits = sum(
        answerer.answer_frames(
            qa, candidate_timestamps, chosen, fps=fps, max_frames=max_frames, seed=base + draw
        ).correct
        for draw in range(samples)
    )
    return hits / samples


def estimate_difficulty(
    mllm: MLLM,
    example: TrainExample,
    *,
    k: int,
    samples: int = 1,
    generation: GenerationConfig | None = None,
    frame_max_pixels: int = DEFAULT_MAX_PIXELS,
    frame_store: FrameStore | None = None,
) -> float:
    """``example``'s difficulty ``c``: the pass rate of ``mllm`` with ``k`` uniformly spaced candidate frames.

    With greedy decoding (the default) one answer is exact; with sampling (``generation.temperature > 0``), the
    mean over ``samples`` seeded answers (see :func:`uniform_pass_rate`). ``k`` should be the training budget: the
    reward compares the sampler's frames with uniform frames at the same K. For many items use
    :func:`fill_difficulty` (one answerer, an answer cache, no feature indexing).
    """
    answerer = MLLMAnswerer(mllm, frame_max_pixels=frame_max_pixels, frame_store=frame_store, generation=generation)
    features = example.features
    return uniform_pass_rate(
        answerer,
        example.qa,
        features.timestamps,
        k=k,
        samples=samples,
        fps=features.fps,
        max_frames=features.max_frames,
    )


@dataclass
class DifficultyReport:
    """The outcome of :func:`fill_difficulty`."""

    path: Path
    """The QA JSONL written."""
    rated: int = 0
    """Items whose difficulty was measured now."""
    kept: int = 0
    """Items that already had a difficulty (kept without ``overwrite``)."""
    skipped: list[SkippedItem] = field(default_factory=list)
    """Items left without a new difficulty (no answer letter, bad video); written unchanged."""
    mean_difficulty: float = math.nan
    """Mean of the difficulties measured now."""

    def summary(self) -> str:
        line = f"{self.rated} items rated (mean difficulty {self.mean_difficulty:.3f}), {self.kept} kept"
        if self.skipped:
            line += f", {len(self.skipped)} skipped"
        return f"{line}; written to {self.path}"


def fill_difficulty(
    items: Sequence[QAItem],
    output: str | Path,
    *,
    mllm: MLLM,
    k: int,
    samples: int = 1,
    generation: GenerationConfig | None = None,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    frame_max_pixels: int = DEFAULT_MAX_PIXELS,
    frame_store: FrameStore | None = None,
    cache_path: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> DifficultyReport:
    """Measure every item's difficulty ``c`` (pass rate with ``k`` uniform frames) and write a new QA JSONL:
    :func:`msjoe.data.calibrate.calibrate` (``msjoe data calibrate``) one answer at a time, kept for callers of
    this older entry point.

    Items keep their order; those that cannot be rated (no answer letter, a missing or broken video) are written
    unchanged and reported. Items that already have a difficulty are kept unless ``overwrite``. ``cache_path``
    (an answer cache shared with :class:`MLLMAnswerer` for greedy answers) makes an interrupted run resume without
    asking again.
    """
    from msjoe.data.calibrate import CalibrationConfig, calibrate

    config = CalibrationConfig(
        k=k,
        samples=samples,
        generation=generation or DEFAULT_ANSWER_GENERATION,
        fps=fps,
        max_frames=max_frames,
        frame_max_pixels=frame_max_pixels,
        batch_size=1,
        overwrite=overwrite,
    )
    result = calibrate(
        items, output, mllm=mllm, config=config, cache_path=cache_path, frame_store=frame_store, progress=progress
    )
    skipped = [SkippedItem(s.id, s.video, s.reason, s.kind) for s in result.skipped]
    report = DifficultyReport(Path(output), result.rated, result.kept, skipped, result.mean_difficulty)
    (logger.warning if report.skipped else logger.info)("difficulty: %s", report.summary())
    return report
