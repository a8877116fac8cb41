"""Stage 1's MLLM answerer and the difficulty of items, with the real tiny random Qwen2.5-VL on smoke videos.

The tiny model is random, so its replies are gibberish; the tests choose options whose words its replies contain
(the parser then reads "the reply repeats one option's text"), and compute every expected outcome by hand with
:func:`msjoe.pipeline.answer_question` on the frames the code under test should have shown.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from msjoe.cache import FeatureCache
from msjoe.data import QAItem, read_qa_jsonl
from msjoe.data.smoke import write_smoke_dataset
from msjoe.features import DualEncoder
from msjoe.mllm import MLLM, GenerationConfig, Message, load_mllm
from msjoe.mllm.prompts import answer_prompt, option_letters
from msjoe.pipeline import answer_question, load_frames
from msjoe.train.answerer import MLLMAnswerer, estimate_difficulty, fill_difficulty
from msjoe.train.data import prepare_examples
from msjoe.train.examples import TrainExample
from msjoe.train.stage1 import Answerer

FPS = 1.0
DURATION = 10.0  # 10 one-second candidates a video
PIXELS = 28 * 28 * 4  # 4 visual tokens a frame: fast
GREEDY = GenerationConfig(max_new_tokens=24)


@pytest.fixture(scope="module")
def mllm(tiny_qwen_dir: Path) -> Any:
    return load_mllm(str(tiny_qwen_dir))


@pytest.fixture(scope="module")
def examples(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[TrainExample]:
    folder = tmp_path_factory.mktemp("answerer")
    items = read_qa_jsonl(write_smoke_dataset(folder / "smoke", num_items=4, duration=DURATION, size=(64, 48)))
    encoder = DualEncoder.from_pretrained(str(tiny_clip_dir))
    return prepare_examples(
        items, encoder=encoder, cache=FeatureCache(folder / "cache"), fps=FPS, queries=None
    ).examples


@pytest.fixture
def generate_calls(mllm: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the real model's ``generate`` (it keeps running)."""
    calls: list[int] = []
    original = mllm.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mllm.model, "generate", spy)
    return calls


def with_options(example: TrainExample, options: tuple[str, ...], answer: str) -> TrainExample:
    return dataclasses.replace(example, qa=dataclasses.replace(example.qa, options=options, answer=answer))


def reply_by_hand(
    mllm: Any, example: TrainExample, indices: list[int], generation: GenerationConfig
) -> tuple[str | None, str]:
    """The parsed letter and the reply for ``indices``, computed without the code under test."""
    times = [float(example.features.timestamps[i]) for i in indices]
    frames = load_frames(example.qa.video, times, PIXELS, fps=FPS)
    parse, reply = answer_question(
        mllm, example.qa.question, example.qa.options, list(frames), times, frame_max_pixels=PIXELS,
        generation=generation,
    )  # fmt: skip
    assert parse is not None
    return (parse.letter if parse.ok else None), reply


# --- the answerer ------------------------------------------------------------------------------------------------


def test_answers_match_the_model_and_greedy_answers_are_cached_across_restarts(
    mllm: Any, examples: list[TrainExample], tmp_path: Path, generate_calls: list[int]
) -> None:
    path = tmp_path / "answers.jsonl"
    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=GREEDY)
    assert isinstance(answerer, Answerer)
    example = examples[0]

    first = answerer.answer(example, torch.tensor([6, 1, 3]))
    assert len(generate_calls) == 1 and not first.cached
    letter, reply = reply_by_hand(mllm, example, [1, 3, 6], GREEDY)  # frames are shown in time order
    assert (first.letter, first.reply) == (letter, reply)
    assert first.correct == (letter == example.qa.answer)
    generate_calls.clear()

    # The same draw (in any order) is never asked again; another draw is.
    again = answerer.answer(example, [1, 3, 6])
    assert generate_calls == [] and again.cached and (again.letter, again.reply) == (first.letter, first.reply)
    assert answerer.answer_correct(example, torch.tensor([3, 6, 1])) == first.correct and generate_calls == []
    answerer.answer_correct(example, torch.tensor([0, 4, 9]))
    assert len(generate_calls) == 1
    stats = answerer.stats
    assert (stats.answers, stats.cache_hits, stats.model_calls) == (4, 2, 2)

    # A restarted run reads the file: nothing is asked again.
    generate_calls.clear()
    restarted = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=GREEDY)
    assert restarted.answer(example, [1, 3, 6]).reply == reply
    restarted.answer(example, [0, 4, 9])
    assert generate_calls == [] and restarted.stats.cache_hits == 2

    # Everything that changes the reply is part of the key: the pixel budget, the item's question, the model.
    MLLMAnswerer(mllm, frame_max_pixels=2 * PIXELS, cache_path=path, generation=GREEDY).answer(example, [1, 3, 6])
    edited = dataclasses.replace(example, qa=dataclasses.replace(example.qa, question="Which colour comes first?"))
    restarted.answer(edited, [1, 3, 6])
    MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=GREEDY, model_id="other").answer(
        example, [1, 3, 6]
    )
    assert len(generate_calls) == 3
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 5 and records[0]["indices"] == [1, 3, 6] and records[0]["reply"] == reply


def test_unparsable_replies_are_wrong_and_counted(mllm: Any, examples: list[TrainExample], tmp_path: Path) -> None:
    example = examples[1]
    letter, _ = reply_by_hand(mllm, example, [2, 5], GREEDY)
    assert letter is None  # the random model's gibberish names no colour of the smoke options
    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=tmp_path / "a.jsonl", generation=GREEDY)
    assert answerer.answer_correct(example, [2, 5]) is False
    assert answerer.answer_correct(example, [2, 5]) is False  # also from the cache
    assert answerer.stats.unparsed == 2 and answerer.stats.correct == 0
    (record,) = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert record["letter"] is None and record["status"] == "unparsed" and record["reply"]


def test_a_damaged_answer_cache_is_used_with_a_warning(
    mllm: Any, examples: list[TrainExample], tmp_path: Path, generate_calls: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.jsonl"
    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=GREEDY)
    answerer.answer(examples[0], [1, 2])
    answerer.answer(examples[0], [3, 4])
    lines = path.read_text().splitlines()
    path.write_text("not json at all\n" + lines[0] + "\n" + lines[1][:15])  # garbage, a record, a torn record
    generate_calls.clear()
    with caplog.at_level(logging.WARNING, logger="msjoe.train.data"):
        reloaded = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=GREEDY)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping an unreadable cache line" in messages and "partial last line" in messages
    reloaded.answer(examples[0], [1, 2])
    assert generate_calls == []
    reloaded.answer(examples[0], [3, 4])  # its record was torn: asked again
    assert len(generate_calls) == 1


def test_sampling_disables_the_cache_and_resumes_its_seeds(
    mllm: Any, examples: list[TrainExample], tmp_path: Path, generate_calls: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    sampling = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=5)
    path = tmp_path / "answers.jsonl"
    with caplog.at_level(logging.WARNING, logger="msjoe.train.answerer"):
        answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=sampling)
    assert any("not used" in r.getMessage() for r in caplog.records)
    example = examples[0]
    replies = [answerer.answer(example, [1, 3, 6]).reply for _ in range(4)]
    assert len(generate_calls) == 4 and not path.exists() and answerer.stats.cache_hits == 0
    # The n-th sampled answer uses seed 5 + n, by hand:
    assert replies[2] == reply_by_hand(mllm, example, [1, 3, 6], dataclasses.replace(sampling, seed=7))[1]
    assert len(set(replies)) > 1

    # A resumed answerer continues the seed sequence.
    first_half = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, generation=sampling)
    for _ in range(2):
        first_half.answer(example, [1, 3, 6])
    resumed = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, generation=sampling)
    resumed.load_state_dict(json.loads(json.dumps(first_half.state_dict())))
    assert [resumed.answer(example, [1, 3, 6]).reply for _ in range(2)] == replies[2:]
    assert resumed.stats.answers == 4


def test_gold_probability_reward_is_the_gold_letters_probability_and_is_cached(
    mllm: Any, examples: list[TrainExample], tmp_path: Path, generate_calls: list[int]
) -> None:
    path = tmp_path / "answers.jsonl"
    sampling = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=5)  # unused: nothing is decoded
    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=sampling,
                            reward="gold_probability")  # fmt: skip
    example = examples[0]
    reward = answerer.answer_correct(example, torch.tensor([6, 1, 3]))
    # By hand: the answer turn on the frames in time order, scored by the model's first-token distribution.
    times = [float(example.features.timestamps[i]) for i in (1, 3, 6)]
    frames = load_frames(example.qa.video, times, PIXELS, fps=FPS)
    chat = answer_prompt(example.qa.question, list(example.qa.options), list(frames), times, frame_max_pixels=PIXELS)
    expected = mllm.option_probabilities(chat, option_letters(len(example.qa.options)))
    assert isinstance(reward, float) and reward == pytest.approx(expected.probabilities[example.qa.answer], abs=1e-6)
    assert 0 < reward < 1 and generate_calls == []
    outcome = answerer.answer(example, [1, 3, 6])
    assert outcome.cached and outcome.gold_probability == reward and outcome.reply == ""
    assert outcome.letter == max(expected.probabilities, key=expected.probabilities.get)
    assert outcome.correct == (outcome.letter == example.qa.answer)

    # Restarted: read from the file. A decoding answerer on the same file never reads these records as replies.
    restarted = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, reward="gold_probability")
    assert restarted.answer_correct(example, [1, 3, 6]) == reward and restarted.stats.model_calls == 0
    decoding = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=path, generation=GREEDY)
    assert isinstance(decoding.answer_correct(example, [1, 3, 6]), bool) and len(generate_calls) == 1
    (record, _) = [json.loads(line) for line in path.read_text().splitlines()]
    assert list(record["probabilities"]) == list("ABCDEFGH"[: len(example.qa.options)])
    assert 0 < record["letter_mass"] <= 1


def test_answer_many_gives_the_one_at_a_time_verdicts_and_counts(
    mllm: Any, examples: list[TrainExample], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncached answers are asked together (chat_many), a repeated draw once, a cached one not at all."""
    requests = [(examples[0], [1, 3]), (examples[1], [2, 5]), (examples[0], [3, 1]), (examples[2], [0, 9])]
    alone = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, generation=GREEDY)
    alone.answer_correct(examples[2], [0, 9])  # cached before the batch
    expected = [alone.answer_correct(example, chosen) for example, chosen in requests]
    together = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, generation=GREEDY, batch_size=2)
    together.answer_correct(examples[2], [0, 9])
    calls: list[int] = []
    original = mllm.chat_many

    def spy(chats: Any, generation: Any = None) -> Any:
        calls.append(len(chats))
        return original(chats, generation)

    monkeypatch.setattr(mllm, "chat_many", spy)
    assert together.answer_many(requests) == expected
    assert calls == [2]  # the two distinct uncached draws, in one call
    assert dataclasses.asdict(together.stats) == dataclasses.asdict(alone.stats)


def test_answer_many_batches_gold_probabilities(
    mllm: Any, examples: list[TrainExample], monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [(examples[n % 3], [n % 10, (n + 4) % 10]) for n in range(5)]
    alone = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, reward="gold_probability")
    expected = [alone.answer_correct(example, chosen) for example, chosen in requests]
    together = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, reward="gold_probability", batch_size=2)
    calls: list[int] = []
    original = mllm.option_probabilities_many

    def spy(chats: Any, letters: Any) -> Any:
        calls.append(len(chats))
        return original(chats, letters)

    monkeypatch.setattr(mllm, "option_probabilities_many", spy)
    verdicts = together.answer_many(requests)
    assert calls == [2, 2, 1]
    assert verdicts == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        MLLMAnswerer(mllm, batch_size=0)


def test_gold_probability_needs_a_backend_that_scores_options() -> None:
    class TextOnly(MLLM):  # a backend that decodes but cannot read next-token probabilities
        def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
            return "A"

    with pytest.raises(ValueError, match="TextOnly backend does not give"):
        MLLMAnswerer(TextOnly(), reward="gold_probability")
    with pytest.raises(ValueError, match="reward must be one of"):
        MLLMAnswerer(TextOnly(), reward="likelihood")
    assert MLLMAnswerer(TextOnly()).reward == "correct"


def test_bad_calls_are_refused(mllm: Any, examples: list[TrainExample]) -> None:
    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, generation=GREEDY)
    no_gold = dataclasses.replace(examples[0], qa=dataclasses.replace(examples[0].qa, answer=None))
    with pytest.raises(ValueError, match="no gold answer"):
        answerer.answer_correct(no_gold, [1])
    with pytest.raises(IndexError, match="outside"):
        answerer.answer_correct(examples[0], [10])
    with pytest.raises(ValueError, match="no frames"):
        answerer.answer_correct(examples[0], [])
    with pytest.raises(ValueError, match="frame_max_pixels"):
        MLLMAnswerer(mllm, frame_max_pixels=0)


# --- difficulty --------------------------------------------------------------------------------------------------

# Words the tiny model's replies contain: a reply repeating exactly one of them parses as that option.
GREEDY_OPTIONS = ("ter", "query", "blue", "red")
SAMPLED_OPTIONS = ("man", "that", "frame", "seconds")


def test_greedy_difficulty_is_the_hand_checked_pass_rate(
    mllm: Any, examples: list[TrainExample], generate_calls: list[int]
) -> None:
    example = with_options(examples[0], GREEDY_OPTIONS, "A")
    # Uniform candidates for T = 10, K = 4: floor((2i + 1) * 10 / 8) = 1, 3, 6, 8.
    letter, _ = reply_by_hand(mllm, example, [1, 3, 6, 8], GREEDY)
    assert letter is not None  # the reply repeats one option's text (see GREEDY_OPTIONS)
    generate_calls.clear()
    for gold in "ABCD":
        rate = estimate_difficulty(mllm, with_options(example, GREEDY_OPTIONS, gold), k=4, samples=5,
                                   generation=GREEDY, frame_max_pixels=PIXELS)  # fmt: skip
        assert rate == (1.0 if gold == letter else 0.0)
    assert len(generate_calls) == 4  # greedy: one answer is exact, whatever `samples`


def test_sampled_difficulty_is_the_mean_over_seeded_answers(mllm: Any, examples: list[TrainExample]) -> None:
    sampling = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=0)
    example = with_options(examples[0], SAMPLED_OPTIONS, "A")
    letters = [
        reply_by_hand(mllm, example, [1, 3, 6, 8], dataclasses.replace(sampling, seed=seed))[0] for seed in range(8)
    ]
    parsed = Counter(letter for letter in letters if letter is not None)
    gold = parsed.most_common(1)[0][0] if parsed else "A"
    expected = sum(letter == gold for letter in letters) / 8
    assert 0 < expected < 1  # a non-trivial pass rate (the options are words the sampled replies contain)
    rate = estimate_difficulty(mllm, with_options(example, SAMPLED_OPTIONS, gold), k=4, samples=8,
                               generation=sampling, frame_max_pixels=PIXELS)  # fmt: skip
    assert rate == expected


def test_fill_difficulty_writes_a_rated_qa_file(
    mllm: Any, examples: list[TrainExample], tmp_path: Path, generate_calls: list[int]
) -> None:
    smoke = [dataclasses.replace(e.qa, difficulty=None) for e in examples[:2]]
    rated_by_hand = dataclasses.replace(smoke[0], id="greedy-hit", options=GREEDY_OPTIONS, answer="A")
    missing = dataclasses.replace(smoke[0], id="missing", video=str(tmp_path / "missing.mp4"))
    no_answer = dataclasses.replace(smoke[1], id="no-answer", answer=None)
    already = dataclasses.replace(smoke[1], id="already", difficulty=0.3)
    items: list[QAItem] = [smoke[0], missing, rated_by_hand, no_answer, already, smoke[1]]
    output = Path(examples[0].qa.video).parent.parent / "rated.jsonl"  # beside the smoke QA file
    cache = tmp_path / "answers.jsonl"

    report = fill_difficulty(items, output, mllm=mllm, k=4, generation=GREEDY, fps=FPS, frame_max_pixels=PIXELS,
                             cache_path=cache)  # fmt: skip
    written = read_qa_jsonl(output)
    assert [item.id for item in written] == [item.id for item in items]
    by_id = {item.id: item for item in written}
    for item in (smoke[0], rated_by_hand, smoke[1]):
        example = next(e for e in examples if e.qa.video == item.video)
        letter, _ = reply_by_hand(mllm, dataclasses.replace(example, qa=item), [1, 3, 6, 8], GREEDY)
        assert by_id[item.id].difficulty == float(letter == item.answer)
    assert by_id["greedy-hit"].difficulty == 1.0
    assert by_id["missing"].difficulty is None and by_id["no-answer"].difficulty is None
    assert by_id["already"].difficulty == 0.3
    assert (report.rated, report.kept) == (3, 1)
    assert {s.id: s.kind for s in report.skipped} == {"missing": "VideoNotFoundError", "no-answer": "no_answer"}
    assert report.mean_difficulty == pytest.approx(sum(by_id[i].difficulty for i in ("smoke-0000", "greedy-hit",
                                                                                        "smoke-0001")) / 3)  # fmt: skip
    # Videos inside the output's folder are written relative to it.
    assert json.loads(output.read_text().splitlines()[0])["video"].startswith("videos/")

    # Rerun with overwrite: greedy answers come from the cache, the model is not asked again.
    generate_calls.clear()
    again = fill_difficulty(items, output, mllm=mllm, k=4, generation=GREEDY, fps=FPS, frame_max_pixels=PIXELS,
                            cache_path=cache, overwrite=True)  # fmt: skip
    assert len(generate_calls) == 1  # only "already", rated for the first time
    assert again.rated == 4 and again.kept == 0
