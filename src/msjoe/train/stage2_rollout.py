"""Stage-2 rollouts: a group of G joint rollouts of one training item, as four named steps over the pipeline.

Each step calls the inference functions of :mod:`msjoe.pipeline` (the arrows of the data flow) with the trainer's
sampling settings::

    write_queries   question + K/2 low-res previews ─MLLM samples─▶ G query replies (one prompt, batched)
    draw_frames     reply ─parse─▶ queries (the question if none parse) ─text tower─▶ S ─U-Sampler─▶ K draws
    answer          K frames (time-ordered, timestamped) + question ─MLLM samples─▶ answer reply (batched)
    score           reward r = w_acc · r_acc + w_format · r_format + w_info · r_info  ─▶ :class:`Rollout`

The update that consumes them is :class:`msjoe.train.stage2.Stage2Trainer`; the choices are in docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch

from msjoe.cache import FrameFeatures
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.mllm.base import GenerationConfig, Message
from msjoe.mllm.parsing import answer_follows_format, parse_answer, parse_queries, queries_follow_format
from msjoe.mllm.prompts import answer_prompt, query_prompt
from msjoe.mllm.transformers_backend import Completion, TransformersMLLM
from msjoe.pipeline import load_frames, preview_indices, query_similarity
from msjoe.rl.rewards import answer_is_correct, informative_fraction
from msjoe.rl.rewards import rollout_reward as compute_rollout_reward
from msjoe.samplers.usampler import USampler
from msjoe.train.examples import TrainExample
from msjoe.train.stage2_config import Stage2Config

__all__ = ["Rollout", "RolloutContext", "rollout_group"]

Turn = Literal["query", "answer"]


@dataclass(eq=False)
class Rollout:
    """One joint rollout: what the MLLM and the sampler did, what it earned, and what the update needs.

    Token tensors are on the CPU. ``*_messages`` hold the chats (with their frames) the replies answer; they are
    what the update re-scores and are left out of :meth:`to_dict`.
    """

    example_id: str
    index: int
    """Position in its item's group (0 .. G-1)."""
    query_seed: int
    """Seed of the batched ``generate`` call that wrote the query reply (shared by its generation batch)."""
    answer_seed: int
    # query turn
    query_reply: str
    query_token_ids: list[int]
    query_prompt_tokens: int
    """Length of the query prompt in the MLLM's input (text and image tokens): sizes the scoring batches."""
    queries: list[str]
    queries_from_question: bool
    """No query parsed from the reply: the question itself was the search query."""
    # sampler
    sim: torch.Tensor = field(repr=False)
    """``[Nq, T]`` similarities of the queries to the candidate frames."""
    draw_order: list[int]
    """The sampler's K draws in draw order (what the Plackett–Luce log-probability needs)."""
    chosen_indices: list[int]
    """The same frames in time order (what the MLLM saw)."""
    chosen_timestamps: list[float]
    num_candidates: int
    sampler_entropy: float
    """Entropy (nats) of the sampler's distribution over the T candidates for this rollout's ``sim``."""
    # answer turn
    answer_reply: str
    answer_token_ids: list[int]
    answer_prompt_tokens: int
    answer_letter: str | None
    answer_status: str
    # reward
    correct: bool
    queries_well_formed: bool
    answer_well_formed: bool
    info_fraction: float
    reward_accuracy: float
    reward_format: float
    reward_info: float
    reward: float
    """The total reward (sum of the three weighted parts)."""
    query_old_logprobs: torch.Tensor | None = None
    """``[Lq]`` log-probabilities of the query tokens (temperature-scaled) under the policy that generated them: the
    PPO ratio's denominator. None until an update scores the rollout, which fills it in (a rollout of a group with
    zero advantages and no KL term is never scored); values set beforehand are used as given."""
    answer_old_logprobs: torch.Tensor | None = None
    query_ref_logprobs: torch.Tensor | None = None
    """``[Lq]`` log-probabilities under the reference model (scored by :meth:`Stage2Trainer.rollout` when
    ``kl_beta > 0``, else None)."""
    answer_ref_logprobs: torch.Tensor | None = None
    query_messages: list[Message] = field(default_factory=list, repr=False)
    answer_messages: list[Message] = field(default_factory=list, repr=False)

    @property
    def num_tokens(self) -> int:
        """The MLLM's own tokens in both turns (what the PPO loss averages over)."""
        return len(self.query_token_ids) + len(self.answer_token_ids)

    def frame_positions(self) -> list[float]:
        """Where the chosen frames lie, as fractions ``(index + 0.5) / T`` of the candidate timeline."""
        return [(index + 0.5) / self.num_candidates for index in self.chosen_indices]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for logs and for inspecting a bad batch (no frames, no similarity matrix)."""
        record: dict[str, Any] = {}
        for item in fields(self):
            if item.name in ("query_messages", "answer_messages", "sim"):
                continue
            value = getattr(self, item.name)
            record[item.name] = value.tolist() if isinstance(value, torch.Tensor) else value
        record["sim_shape"] = list(self.sim.shape)
        return record


@dataclass(frozen=True)
class RolloutContext:
    """What a group of rollouts runs on: the models, the frame source and the trainer's random streams."""

    config: Stage2Config
    mllm: TransformersMLLM
    sampler: USampler
    encoder: DualEncoder
    frame_store: FrameStore | None
    next_seeds: Callable[[int], list[int]]
    """``next_seeds(n)``: n generation seeds from the trainer's generator."""
    draw_generator: torch.Generator
    """The generator of the sampler's Gumbel noise."""


@dataclass(frozen=True)
class _Draw:
    """One rollout after :func:`draw_frames`: its query reply and the sampler's draw from its queries."""

    query: Completion
    query_seed: int
    queries: list[str]
    from_question: bool
    """No query parsed from the reply: the question itself was the search query."""
    sim: torch.Tensor
    order: list[int]
    """The K draws in draw order."""
    entropy: float

    @property
    def chosen(self) -> list[int]:
        """The drawn frames in time order (what the MLLM sees)."""
        return sorted(self.order)


def rollout_group(example: TrainExample, context: RolloutContext) -> list[Rollout]:
    """``group_size`` joint rollouts of ``example`` (no reference log-probabilities: the trainer adds those)."""
    qa = example.qa
    if qa.answer is None:
        raise ValueError(f"item {qa.id!r} has no answer: stage 2 rewards need the correct option")
    query_batches, answer_batches = generation_batches(context, "query"), generation_batches(context, "answer")
    # Both turns' seeds are drawn up front, so a group's seeds do not depend on what its replies were.
    query_seeds, answer_seeds = context.next_seeds(len(query_batches)), context.next_seeds(len(answer_batches))
    query_messages, replies = write_queries(example, context, query_batches, query_seeds)
    draws = [draw_frames(example, context, reply, seed) for reply, seed in replies]
    answer_chats, answers = answer(example, context, draws, answer_batches, answer_seeds)
    return [
        score(example, context, index, draw, query_messages, answer_messages, reply, seed)
        for index, (draw, answer_messages, (reply, seed)) in enumerate(zip(draws, answer_chats, answers, strict=True))
    ]


def write_queries(
    example: TrainExample, context: RolloutContext, batches: Sequence[tuple[int, int]], seeds: Sequence[int]
) -> tuple[list[Message], list[tuple[Completion, int]]]:
    """Turn 1: the query prompt over K/2 previews, and the group's replies to it (each with its batch's seed)."""
    config, qa, features = context.config, example.qa, example.features
    candidates = _candidates(features)
    preview_ts = [float(candidates[i]) for i in preview_indices(len(candidates), config.k)]
    preview = load_frames(qa.video, preview_ts, config.preview_max_pixels, **_frame_source(example, context))
    query_messages = query_prompt(
        qa.question,
        list(qa.options),
        list(preview),
        preview_ts,
        max_queries=config.max_queries,
        preview_max_pixels=config.preview_max_pixels,
    )
    replies: list[tuple[Completion, int]] = []
    for (start, stop), seed in zip(batches, seeds, strict=True):
        generation = _generation(config, config.query_max_new_tokens, seed)
        batch = context.mllm.complete_batch([query_messages], generation, samples_per_chat=stop - start)
        replies += [(reply, seed) for reply in batch]
    return query_messages, replies


def draw_frames(example: TrainExample, context: RolloutContext, query: Completion, query_seed: int) -> _Draw:
    """The sampler's policy draw of K frames from the similarities of the reply's queries."""
    config, qa = context.config, example.qa
    queries = parse_queries(query.text, max_queries=config.max_queries)
    from_question = not queries
    if from_question:
        queries = [qa.question]
    sim = query_similarity(context.encoder, queries, example.features)
    with torch.no_grad():
        logits = context.sampler.logits(sim).float()
    order = [int(i) for i in context.sampler.draw(logits, config.k, generator=context.draw_generator).cpu()]
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = float(-(log_p.exp() * log_p).sum())
    return _Draw(query, query_seed, queries, from_question, sim, order, entropy)


def answer(
    example: TrainExample,
    context: RolloutContext,
    draws: Sequence[_Draw],
    batches: Sequence[tuple[int, int]],
    seeds: Sequence[int],
) -> tuple[list[list[Message]], list[tuple[Completion, int]]]:
    """Turn 2: each rollout's answer chat over its K frames (the union of the group's draws decoded once), and the
    replies (each with its batch's seed)."""
    config, qa = context.config, example.qa
    candidates = _candidates(example.features)
    union = sorted({i for draw in draws for i in draw.order})
    union_frames = load_frames(
        qa.video, [float(candidates[i]) for i in union], config.frame_max_pixels, **_frame_source(example, context)
    )
    frame_of = dict(zip(union, union_frames, strict=True))
    chats = [
        answer_prompt(
            qa.question,
            list(qa.options),
            [frame_of[i] for i in draw.chosen],
            [float(candidates[i]) for i in draw.chosen],
            frame_max_pixels=config.frame_max_pixels,
        )
        for draw in draws
    ]
    replies: list[tuple[Completion, int]] = []
    for (start, stop), seed in zip(batches, seeds, strict=True):
        generation = _generation(config, config.answer_max_new_tokens, seed)
        replies += [(reply, seed) for reply in context.mllm.complete_batch(chats[start:stop], generation)]
    return chats, replies


def score(
    example: TrainExample,
    context: RolloutContext,
    index: int,
    draw: _Draw,
    query_messages: list[Message],
    answer_messages: list[Message],
    answer_reply: Completion,
    answer_seed: int,
) -> Rollout:
    """The rollout's reward (accuracy, format, informative queries) and its record."""
    config, qa = context.config, example.qa
    options = list(qa.options)
    candidates = _candidates(example.features)
    parsed = parse_answer(answer_reply.text, options)
    correct = answer_is_correct(answer_reply.text, options, qa.answer)
    queries_ok = queries_follow_format(draw.query.text, max_queries=config.max_queries)
    answer_ok = answer_follows_format(answer_reply.text, options)
    info = (
        0.0
        if draw.from_question
        else float(informative_fraction(draw.sim, threshold=config.info_threshold, min_gap=config.info_min_gap))
    )
    reward = compute_rollout_reward(correct, queries_ok, answer_ok, info, config.reward_weights)
    return Rollout(
        example_id=qa.id,
        index=index,
        query_seed=draw.query_seed,
        answer_seed=answer_seed,
        query_reply=draw.query.text,
        query_token_ids=list(draw.query.token_ids),
        query_prompt_tokens=draw.query.prompt_tokens,
        queries=list(draw.queries),
        queries_from_question=draw.from_question,
        sim=draw.sim.detach().cpu(),
        draw_order=draw.order,
        chosen_indices=draw.chosen,
        chosen_timestamps=[float(candidates[i]) for i in draw.chosen],
        num_candidates=len(candidates),
        sampler_entropy=draw.entropy,
        answer_reply=answer_reply.text,
        answer_token_ids=list(answer_reply.token_ids),
        answer_prompt_tokens=answer_reply.prompt_tokens,
        answer_letter=parsed.letter,
        answer_status=parsed.status,
        correct=correct,
        queries_well_formed=queries_ok,
        answer_well_formed=answer_ok,
        info_fraction=info,
        reward_accuracy=float(reward.accuracy),
        reward_format=float(reward.format),
        reward_info=float(reward.info),
        reward=float(reward.total),
        query_messages=query_messages,  # the same list for the whole group: encoded once when scored
        answer_messages=answer_messages,
    )


def generation_batches(context: RolloutContext, turn: Turn) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of the group's rollouts whose ``turn`` is generated together."""
    config = context.config
    size = config.generation_batch_size
    if size is None:
        on_cpu = turn == "answer" and torch.device(context.mllm.device).type == "cpu"
        size = 1 if on_cpu else config.group_size
    return [(start, min(start + size, config.group_size)) for start in range(0, config.group_size, size)]


def _generation(config: Stage2Config, max_new_tokens: int, seed: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=config.temperature, top_p=config.top_p, seed=seed
    )


def _candidates(features: FrameFeatures) -> np.ndarray:
    return np.asarray(features.timestamps, dtype=np.float64)


def _frame_source(example: TrainExample, context: RolloutContext) -> dict[str, Any]:
    """Where :func:`~msjoe.pipeline.load_frames` reads the item's frames: the store, else the video decoded."""
    features = example.features
    return {
        "store": context.frame_store,
        "fps": features.fps,
        "max_frames": features.max_frames,
        "info": features.video_info,
    }
