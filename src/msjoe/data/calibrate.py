"""``msjoe data calibrate``: each item's difficulty ``c``, the base MLLM's pass rate with K uniform frames (paper),
and optionally its blind pass rate (no frames at all), written into a new QA JSONL.

Every answer goes to an append-only answer cache (:class:`~msjoe.data.replies.ReplyCache`) the moment its batch
returns, keyed by :func:`~msjoe.data.replies.answer_key` (the item, the video's content, the frames, the model,
the prompt version...). The output is computed from the cache alone, so a run killed at any point resumes where
it stopped and never asks a question it has an answer to; a second calibration, or stage 1's answerer, reuses
the same answers. Greedy answers (the default) are exact in one draw; with sampling (``temperature > 0``) an
item's ``c`` is the mean over ``samples`` draws seeded ``seed + 0 .. seed + samples - 1``, each cached with its
seed.

Batches: up to ``batch_size`` chats go to the model at once: one left-padded ``generate`` with the transformers
backend (greedy only; a batched reply can differ from an unbatched one in the last bits of floating point),
concurrent requests with the HTTP backend.

Several processes (``accelerate launch`` / ``torchrun``, one model per GPU, as ``msjoe eval``): each answers the
items of its share of the videos into its own cache file ``<cache>.rank<R>.jsonl``; the main process then moves those
lines into the cache and writes the output. Shards left by an interrupted run are merged by the next one.

With ``score="gold_probability"`` an item's ``c`` is instead the MLLM's mean probability of the gold letter as
the first reply token (:meth:`msjoe.mllm.MLLM.option_probabilities`, one forward pass, nothing decoded): the
difficulty that matches stage 1's ``answer_reward: gold_probability``. Those answers are cached under the keys
stage 1's answerer uses, so a stage-1 draw of the uniform frames is already answered.

Each rated item records what produced its ``c`` in ``meta["calibration"]`` (``k``, ``model``, ``prompt``,
``answers``, ``correct``, the sampling and frame settings); the blind rate goes to ``meta["blind"]``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from msjoe.checks import AT_LEAST_1, POSITIVE, check_fields
from msjoe.data.replies import ReplyCache, VideoFingerprints, answer_key, describe_mllm, prompt_version
from msjoe.data.schema import QAItem, write_qa_jsonl
from msjoe.distributed import SingleProcess, all_results, main_process_first, my_share, on_every_process
from msjoe.errors import MsjoeError, VideoError
from msjoe.frame_store import DEFAULT_MAX_PIXELS, FrameStore
from msjoe.mllm import MLLM, GenerationConfig
from msjoe.mllm.base import require_option_probabilities
from msjoe.mllm.parsing import parse_answer
from msjoe.mllm.prompts import answer_prompt, option_letters
from msjoe.pipeline import load_frames
from msjoe.progress import progress_bar
from msjoe.samplers.uniform import uniform_indices
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, candidate_timestamps, probe

__all__ = ["CalibrationConfig", "CalibrationReport", "CalibrationSkip", "calibrate", "default_cache_path"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationConfig:
    """How difficulties are measured.

    Attributes:
        k: uniform frames per answer; use the training budget K (the reward compares the sampler's frames with
            uniform frames at the same K).
        samples: answers per item when sampling (greedy answers once: the answer cannot change).
        generation: decoding of the answer turn; greedy with 32 new tokens by default (the answer is a letter).
        fps, max_frames: the candidate grid (use the training run's values).
        frame_max_pixels: pixel budget of each frame shown (the inference setting).
        batch_size: chats sent to the model at once.
        blind: also measure the blind pass rate (the question and options with no frame), for the blind
            answerability filter.
        overwrite: re-rate items that already have a difficulty (their answers still come from the cache).
        model_id: names the model in cache keys and records; ``None``: :func:`~msjoe.data.replies.describe_mllm`.
        score: ``"correct"`` (paper): the pass rate of decoded answers. ``"gold_probability"``: the mean probability
            of the gold letter (one forward pass per answer; ``samples`` and the decoding settings are unused).
    """

    k: Annotated[int, AT_LEAST_1]
    samples: Annotated[int, AT_LEAST_1] = 1
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=32))
    fps: Annotated[float, POSITIVE] = DEFAULT_FPS
    max_frames: Annotated[int, AT_LEAST_1] = DEFAULT_MAX_FRAMES
    frame_max_pixels: Annotated[int, AT_LEAST_1] = DEFAULT_MAX_PIXELS
    batch_size: Annotated[int, AT_LEAST_1] = 8
    blind: bool = False
    overwrite: bool = False
    model_id: str | None = None
    score: Literal["correct", "gold_probability"] = "correct"

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation

    @property
    def sampling(self) -> bool:
        return self.generation.temperature > 0 and self.score == "correct"

    @property
    def draws(self) -> int:
        """Answers per item and condition: ``samples`` when sampling, else one."""
        return self.samples if self.sampling else 1


@dataclass(frozen=True)
class CalibrationSkip:
    """An item left without a new difficulty: ``kind`` is ``"no_answer"`` or a VideoError class name."""

    id: str
    video: str
    reason: str
    kind: str


@dataclass
class CalibrationReport:
    """The outcome of :func:`calibrate` (the same on every process)."""

    path: Path
    """The QA JSONL written."""
    rated: int = 0
    """Items whose difficulty was measured by this run (their answers may come from the cache)."""
    kept: int = 0
    """Items that already had a difficulty (kept without ``overwrite``)."""
    skipped: list[CalibrationSkip] = field(default_factory=list)
    """Items written unchanged: no answer letter, or a video that cannot be read."""
    mean_difficulty: float = math.nan
    """Mean of the difficulties measured by this run."""
    model_calls: int = 0
    """Answers asked of the model by this run (all processes)."""
    cached_answers: int = 0
    """Answers found in the cache."""
    mean_blind: float | None = None
    """Mean blind pass rate of the rated items (with ``blind``)."""

    def summary(self) -> str:
        line = f"{self.rated} items rated (mean difficulty {self.mean_difficulty:.3f}"
        line += f", mean blind pass rate {self.mean_blind:.3f})" if self.mean_blind is not None else ")"
        line += f", {self.kept} kept"
        if self.skipped:
            line += f", {len(self.skipped)} skipped"
        line += f"; {self.model_calls} answers asked, {self.cached_answers} from the cache; written to {self.path}"
        return line


def default_cache_path(output: str | Path) -> Path:
    """The answer cache of a calibration writing ``output``: ``<output stem>.answers.jsonl`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.answers.jsonl")


def _shard_path(cache_path: Path, rank: int) -> Path:
    return cache_path.with_name(f"{cache_path.stem}.rank{rank}.jsonl")


def _merge_shards(cache_path: Path) -> int:
    """Append the lines of ``cache_path``'s rank shards to it, then delete them; the number of lines moved.

    A crash between the two repeats the lines on the next merge, which is harmless (a later record of a key
    replaces an earlier one); a shard's torn last line is dropped (that answer is asked again)."""
    moved = 0
    for shard in sorted(cache_path.parent.glob(f"{cache_path.stem}.rank*.jsonl")):
        body = shard.read_bytes().rpartition(b"\n")[0]
        if body.strip():
            with cache_path.open("ab") as file:
                file.write(body + b"\n")
                file.flush()
                os.fsync(file.fileno())
            moved += body.count(b"\n") + 1
        shard.unlink()
    return moved


@dataclass
class _Ask:
    """One answer to get: the item, the frames (none when blind), the draw's seed, and its cache key."""

    item: QAItem
    key: str
    times: list[float]
    indices: list[int]
    seed: int | None
    fingerprint: str
    grid: tuple[float, int]


class _Calibrator:
    """The per-process work: cache keys for every (item, condition, draw), then the missing answers, in batches."""

    def __init__(self, mllm: MLLM, config: CalibrationConfig, cache: ReplyCache, frame_store: FrameStore | None):
        self.mllm = mllm
        self.config = config
        self.cache = cache
        self.frame_store = frame_store
        self.model = config.model_id or describe_mllm(mllm)
        self.prompt = prompt_version("answer")
        self.fingerprints = VideoFingerprints()
        self.grids: dict[str, np.ndarray] = {}
        self.calls = 0

    def keys(self, item: QAItem, *, blind: bool) -> list[_Ask]:
        """The answers that make ``item``'s pass rate (uniform frames, or none when ``blind``); raises VideoError."""
        config = self.config
        fingerprint = self.fingerprints(item.video)
        if blind:
            indices, times = [], []
        else:
            if item.video not in self.grids:  # probe each video once, however many items ask about it
                info = probe(item.video)
                self.grids[item.video] = candidate_timestamps(info, fps=config.fps, max_frames=config.max_frames)
            grid = self.grids[item.video]
            indices = uniform_indices(len(grid), config.k).tolist()
            times = [float(grid[i]) for i in indices]
        asks = []
        base = config.generation.seed or 0
        for draw in range(config.draws):
            seed = base + draw if config.sampling else None
            sampling = None
            if config.sampling:
                sampling = {
                    "temperature": config.generation.temperature,
                    "top_p": config.generation.top_p,
                    "seed": seed,
                }
            scoring = config.score == "gold_probability"
            key = answer_key(
                item,
                video_fingerprint=fingerprint,
                chosen_timestamps=times,
                model=self.model,
                frame_max_pixels=config.frame_max_pixels,
                # as stage 1's answerer keys a gold probability: nothing is decoded
                max_new_tokens=0 if scoring else config.generation.max_new_tokens,
                prompt=self.prompt,
                sampling=sampling,
                scoring="option_probabilities" if scoring else None,
            )
            asks.append(_Ask(item, key, times, indices, seed, fingerprint, (config.fps, config.max_frames)))
        return asks

    def answer(self, asks: Sequence[_Ask]) -> None:
        """Ask the model ``asks`` (a batch), then cache every answer; raises VideoError on a frame that fails."""
        chats = []
        for ask in asks:
            frames = []
            if ask.times:
                frames = list(
                    load_frames(
                        ask.item.video,
                        ask.times,
                        self.config.frame_max_pixels,
                        store=self.frame_store,
                        fps=self.config.fps,
                        max_frames=self.config.max_frames,
                        fingerprint=ask.fingerprint,
                    )
                )
            chats.append(
                answer_prompt(
                    ask.item.question,
                    ask.item.options,
                    frames,
                    ask.times,
                    frame_max_pixels=self.config.frame_max_pixels,
                )
            )
        self.calls += len(asks)
        if self.config.score == "gold_probability":
            letters = [option_letters(len(ask.item.options)) for ask in asks]
            for ask, scores in zip(asks, self.mllm.option_probabilities_many(chats, letters), strict=True):
                self.cache.put(ask.key, self._record(ask) | {
                    "letter": max(scores.probabilities, key=scores.probabilities.__getitem__),
                    "status": "ok",
                    "reply": "",
                    "probabilities": scores.probabilities,
                    "letter_mass": scores.letter_mass,
                })  # fmt: skip
            return
        replies = self._replies(chats, [ask.seed for ask in asks])
        for ask, reply in zip(asks, replies, strict=True):
            parse = parse_answer(reply, ask.item.options)
            self.cache.put(
                ask.key,
                self._record(ask)
                | {"letter": parse.letter if parse.ok else None, "status": parse.status, "reply": reply},
            )

    def _record(self, ask: _Ask) -> dict[str, Any]:
        """What every cached answer records besides the answer itself."""
        return {
            "id": ask.item.id,
            "video_fingerprint": ask.fingerprint,
            "indices": ask.indices,
            "chosen_timestamps": ask.times,
            "model": self.model,
            "frame_max_pixels": self.config.frame_max_pixels,
            "prompt": self.prompt,
            "seed": ask.seed,
        }

    def _replies(self, chats: list, seeds: list[int | None]) -> list[str]:
        generation = self.config.generation
        batched = getattr(self.mllm, "complete_batch", None)
        if not self.config.sampling and batched is not None and len(chats) > 1:
            return [completion.text for completion in batched(chats, generation)]
        replies: list[str | None] = [None] * len(chats)
        for seed in dict.fromkeys(seeds):  # sampled draws: one call per seed, each chat as if sent alone
            positions = [i for i, s in enumerate(seeds) if s == seed]
            answers = self.mllm.chat_many([chats[i] for i in positions], replace(generation, seed=seed))
            for position, reply in zip(positions, answers, strict=True):
                replies[position] = reply
        return [reply or "" for reply in replies]


def calibrate(
    items: Sequence[QAItem],
    output: str | Path,
    *,
    mllm: MLLM,
    config: CalibrationConfig,
    cache_path: str | Path | None = None,
    frame_store: FrameStore | None = None,
    processes: Any = None,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> CalibrationReport:
    """Measure the difficulty ``c`` of ``items`` and write them, in their order, to ``output`` (QA JSONL; video
    paths inside its folder relative to it).

    Args:
        items: the QA items (e.g. from :func:`msjoe.data.read_qa_jsonl`).
        output: the rated QA JSONL to write.
        mllm: the base MLLM (any backend).
        config: K, sampling, grid, batch size, blind... (:class:`CalibrationConfig`).
        cache_path: the answer cache (JSONL); ``None`` keeps answers in memory (no resuming; one process only).
        frame_store: read frames from this store when it holds the video (``msjoe index --store-frames`` builds
            it in the feature cache folder), else decode them.
        processes: an ``accelerate`` ``PartialState`` to split the items over (see :mod:`msjoe.distributed`).
        progress: show a progress bar (main process).
        on_batch: called with the number of answers asked after each batch (tests, monitoring).

    Items without an answer letter, or whose video cannot be read, are written unchanged and reported. Errors
    that would fail every item (a model that cannot run) propagate; answers cached so far are kept.
    """
    state = processes if processes is not None else SingleProcess()
    output = Path(output)
    world = state.num_processes
    if cache_path is None and world > 1:
        raise ValueError("several processes need an answer cache file on a shared file system (cache_path)")
    cache_file = Path(cache_path).expanduser() if cache_path is not None else None

    if config.score == "gold_probability":
        require_option_probabilities(mllm, "score 'gold_probability'")
    report = CalibrationReport(path=output)
    todo = _items_to_rate(items, config, report)
    cache = main_process_first(state, lambda: _open_answer_cache(cache_file, state), what="reading the answer cache")
    calibrator = _Calibrator(mllm, config, cache, frame_store)
    mine = my_share(state, list(todo.values()), lambda item: item.video_key)

    def answer_share() -> tuple[dict[tuple[str, str], CalibrationSkip], int, int]:
        failed, pending, cached = _pending_asks(mine, calibrator, cache, config)
        with progress_bar(enabled=progress and state.is_main_process) as bar:
            whose = "" if world == 1 else f" (process 0 of {world})"
            task = bar.add_task(f"calibrating{whose}", total=len(pending))

            def advance(count: int) -> None:
                bar.advance(task, count)
                if on_batch is not None:
                    on_batch(count)

            _answer_in_batches(pending, calibrator, config.batch_size, failed, advance)
        return failed, calibrator.calls, cached

    shares = all_results(state, on_every_process(state, answer_share, what="calibrating"))
    failed = {key: skip for share in shares for key, skip in share[0].items()}
    report.model_calls = sum(share[1] for share in shares)
    report.cached_answers = sum(share[2] for share in shares)

    def finish() -> CalibrationReport:
        if cache_file is not None:
            _merge_shards(cache_file)
        answers = ReplyCache(cache_file).records if cache_file is not None else cache.records
        written = _rate_and_write(items, todo, failed, answers, calibrator, config, report)
        write_qa_jsonl(output, written, relative_to=output.parent)
        for skip in report.skipped:
            logger.warning("cannot rate item %s (video %s): %s", skip.id, skip.video, skip.reason)
        return report

    result = on_every_process(state, lambda: finish() if state.is_main_process else None, what="writing the output")
    return all_results(state, result)[0]


def _items_to_rate(items: Sequence[QAItem], config: CalibrationConfig, report: CalibrationReport) -> dict[int, QAItem]:
    """Step 1: sort the items into kept (already rated, no ``overwrite``: counted in ``report.kept``), skipped (no
    answer letter: added to ``report.skipped``) and to rate, returned by their position in ``items``."""
    todo: dict[int, QAItem] = {}  # position in `items` -> item to rate
    for position, item in enumerate(items):
        if item.difficulty is not None and not config.overwrite:
            report.kept += 1
        elif item.answer is None:
            report.skipped.append(CalibrationSkip(item.id, item.video, "no answer letter: no pass rate", "no_answer"))
        else:
            todo[position] = item
    return todo


def _open_answer_cache(cache_file: Path | None, state: Any) -> ReplyCache:
    """Step 2: open the answer cache (in memory without a file). The main process first merges the shards an
    interrupted multi-process run left; with several processes each appends to its own shard and reads the rest."""
    if cache_file is None:
        return ReplyCache(None)
    if state.is_main_process and _merge_shards(cache_file):
        logger.info("%s: merged the answer shards of an interrupted multi-process run", cache_file)
    if state.num_processes == 1:
        return ReplyCache(cache_file)
    return ReplyCache(_shard_path(cache_file, state.process_index), also_read=[cache_file])


def _pending_asks(
    mine: Sequence[QAItem], calibrator: _Calibrator, cache: ReplyCache, config: CalibrationConfig
) -> tuple[dict[tuple[str, str], CalibrationSkip], list[_Ask], int]:
    """Step 3: the questions this process's items need asked (with frames and, with ``blind``, without), less those
    already in the cache. Returns ``(failed, pending, cached)``: items whose video cannot be read, by ``(source,
    id)``; the asks to make; how many answers the cache already held."""
    failed: dict[tuple[str, str], CalibrationSkip] = {}  # (source, id) -> why
    pending: list[_Ask] = []
    cached = 0
    conditions = (False, True) if config.blind else (False,)
    for item in mine:
        try:
            asks = [ask for blind in conditions for ask in calibrator.keys(item, blind=blind)]
        except VideoError as err:
            kind = type(err).__name__
            failed[item.source, item.id] = CalibrationSkip(item.id, item.video, f"{kind}: {err}", kind)
            continue
        missing = [ask for ask in asks if ask.key not in cache]
        cached += len(asks) - len(missing)
        pending.extend(missing)
    return failed, pending, cached


def _answer_in_batches(
    pending: Sequence[_Ask],
    calibrator: _Calibrator,
    batch_size: int,
    failed: dict[tuple[str, str], CalibrationSkip],
    advance: Callable[[int], None],
) -> None:
    """Step 4: ask the model ``pending`` in batches of ``batch_size``, caching each answer. A batch with a frame
    that fails is asked again one by one, so only the item at fault is added to ``failed`` (its later asks are
    dropped); ``advance`` is told how many asks each batch settled."""
    start = 0
    while start < len(pending):
        batch = list(pending[start : start + batch_size])
        start += len(batch)
        batch = [ask for ask in batch if (ask.item.source, ask.item.id) not in failed]
        try:
            calibrator.answer(batch)
        except VideoError:  # find the item(s) at fault, answer the others one by one
            for ask in batch:
                try:
                    calibrator.answer([ask])
                except VideoError as err:
                    kind = type(err).__name__
                    skip = CalibrationSkip(ask.item.id, ask.item.video, f"{kind}: {err}", kind)
                    failed[ask.item.source, ask.item.id] = skip
        advance(len(batch))


def _rate_and_write(
    items: Sequence[QAItem],
    todo: dict[int, QAItem],
    failed: dict[tuple[str, str], CalibrationSkip],
    answers: dict[str, dict[str, Any]],
    calibrator: _Calibrator,
    config: CalibrationConfig,
    report: CalibrationReport,
) -> list[QAItem]:
    """Step 5 (main process): every item in its order, those rated with their pass rate and its provenance in
    ``meta``; fills the report's skips, count and means."""
    written, measured, blind_rates = [], [], []
    for position, item in enumerate(items):
        skip = failed.get((item.source, item.id)) if position in todo else None
        if skip is not None:
            report.skipped.append(skip)
        if position not in todo or skip is not None:
            written.append(item)
            continue
        rated, rate, blind_rate = _rated_item(item, answers, calibrator, config)
        if blind_rate is not None:
            blind_rates.append(blind_rate)
        measured.append(rate)
        written.append(rated)
    report.rated = len(measured)
    if measured:
        report.mean_difficulty = sum(measured) / len(measured)
    if blind_rates:
        report.mean_blind = sum(blind_rates) / len(blind_rates)
    return written


def _rated_item(
    item: QAItem, answers: dict[str, dict[str, Any]], calibrator: _Calibrator, config: CalibrationConfig
) -> tuple[QAItem, float, float | None]:
    """``item`` with its difficulty (the pass rate) and ``meta["calibration"]`` (and ``meta["blind"]``) recording
    how it was measured; returns it with the pass rate and the blind pass rate (None without ``blind``)."""
    rate, correct, count = _pass_rate(calibrator.keys(item, blind=False), answers, item)
    meta = dict(item.meta)
    meta["calibration"] = {
        "k": config.k,
        "model": calibrator.model,
        "prompt": calibrator.prompt,
        "answers": count,
        "correct": correct,
        "temperature": config.generation.temperature,
        "seed": config.generation.seed if config.sampling else None,
        "max_new_tokens": config.generation.max_new_tokens,
        "fps": config.fps,
        "max_frames": config.max_frames,
        "frame_max_pixels": config.frame_max_pixels,
        "score": config.score,
    }
    blind_rate = None
    if config.blind:
        blind_rate, blind_correct, blind_count = _pass_rate(calibrator.keys(item, blind=True), answers, item)
        meta["blind"] = {
            "pass_rate": blind_rate,
            "answers": blind_count,
            "correct": blind_correct,
            "model": calibrator.model,
            "prompt": calibrator.prompt,
        }
    return replace(item, difficulty=rate, meta=meta), rate, blind_rate


def _pass_rate(asks: Sequence[_Ask], answers: dict[str, dict[str, Any]], item: QAItem) -> tuple[float, int, int]:
    """``(rate, correct, count)`` of ``item``'s answers in ``answers``; every key must be there."""
    missing = [ask.key for ask in asks if ask.key not in answers]
    if missing:  # an answer written by a process whose file the main process cannot read
        raise MsjoeError(
            f"{len(missing)} answers of item {item.id!r} are not in the answer cache: is it on a file system every "
            "process sees?"
        )
    correct = sum(answers[ask.key].get("letter") == item.answer for ask in asks)
    records = [answers[ask.key] for ask in asks]
    if all(isinstance(record.get("probabilities"), dict) for record in records):  # score="gold_probability"
        rate = sum(float(record["probabilities"].get(item.answer, 0.0)) for record in records) / len(records)
        return rate, correct, len(asks)
    return correct / len(asks), correct, len(asks)
