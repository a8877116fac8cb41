"""`msjoe data calibrate` with the real tiny random Qwen2.5-VL on smoke videos: pass rates computed by hand,
the blind rate, batching, the answer cache shared with stage 1's answerer, and resuming after SIGKILL without
asking any question twice.

The tiny model's replies are gibberish; options made of words its replies contain make them parse (as in
test_train_answerer.py), so a pass rate can be 0 or 1 and is checked against the model run by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.calibrate import CalibrationConfig, calibrate, default_cache_path
from msjoe.data.schema import QAItem, read_qa_jsonl, write_qa_jsonl
from msjoe.data.smoke import write_smoke_dataset
from msjoe.mllm import GenerationConfig, load_mllm
from msjoe.mllm.prompts import answer_prompt, option_letters
from msjoe.pipeline import answer_question, load_frames
from msjoe.train.answerer import MLLMAnswerer

PIXELS = 28 * 28 * 4
GREEDY = GenerationConfig(max_new_tokens=32)
OPTIONS = ("ter", "query", "blue", "red")  # words the tiny model's greedy replies contain
UNIFORM_K4 = [1.5, 3.5, 6.5, 8.5]  # T = 10 one-second candidates, K = 4: indices 1, 3, 6, 8
runner = CliRunner()


@pytest.fixture(scope="module")
def mllm(tiny_qwen_dir: Path) -> Any:
    return load_mllm(str(tiny_qwen_dir))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> list[QAItem]:
    folder = tmp_path_factory.mktemp("calibrate")
    items = read_qa_jsonl(write_smoke_dataset(folder / "smoke", num_items=4, duration=10.0, size=(64, 48)))
    # Two items with options the replies repeat (so their letters parse), two as written.
    return [dataclasses.replace(items[0], options=OPTIONS, difficulty=None), *items[1:]]


@pytest.fixture
def generate_calls(mllm: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = mllm.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0].shape[0] if args else kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(mllm.model, "generate", spy)
    return calls


def letter_by_hand(mllm: Any, item: QAItem, times: list[float]) -> str | None:
    frames = list(load_frames(item.video, times, PIXELS)) if times else []
    parse, _ = answer_question(
        mllm, item.question, item.options, frames, times, frame_max_pixels=PIXELS, generation=GREEDY
    )
    assert parse is not None
    return parse.letter if parse.ok else None


def test_pass_rates_are_the_models_answers_and_each_item_records_what_made_it(
    mllm: Any, smoke: list[QAItem], tmp_path: Path, generate_calls: list[int]
) -> None:
    gold = letter_by_hand(mllm, smoke[0], UNIFORM_K4)
    assert gold is not None  # the reply repeats an option's text
    blind_letter = letter_by_hand(mllm, smoke[0], [])
    hit = dataclasses.replace(smoke[0], id="hit", answer=gold)
    miss = dataclasses.replace(smoke[0], id="miss", answer=next(letter for letter in "ABCD" if letter != gold))
    no_answer = dataclasses.replace(smoke[1], id="no-answer", answer=None, difficulty=None)
    kept = dataclasses.replace(smoke[1], id="kept", difficulty=0.25)
    missing = dataclasses.replace(smoke[1], id="missing", video=str(tmp_path / "gone.mp4"), difficulty=None)
    items = [hit, no_answer, miss, kept, missing]
    output = tmp_path / "rated.jsonl"
    config = CalibrationConfig(k=4, generation=GREEDY, frame_max_pixels=PIXELS, batch_size=1, blind=True)
    generate_calls.clear()
    report = calibrate(items, output, mllm=mllm, config=config, cache_path=default_cache_path(output))

    written = {item.id: item for item in read_qa_jsonl(output)}
    assert list(written) == [item.id for item in items]  # order kept, nothing dropped
    assert written["hit"].difficulty == 1.0 and written["miss"].difficulty == 0.0
    assert written["kept"].difficulty == 0.25 and written["no-answer"].difficulty is None
    assert written["missing"].difficulty is None
    assert (report.rated, report.kept) == (2, 1)
    assert {s.id: s.kind for s in report.skipped} == {"no-answer": "no_answer", "missing": "VideoNotFoundError"}
    record = written["hit"].meta["calibration"]
    assert (record["k"], record["answers"], record["correct"], record["frame_max_pixels"]) == (4, 1, 1, PIXELS)
    assert record["model"].startswith(str(Path(mllm.model_id).resolve())) and record["prompt"].startswith("answer-")
    assert written["hit"].meta["blind"]["pass_rate"] == float(blind_letter == gold)
    assert written["miss"].meta["blind"]["pass_rate"] == float(blind_letter == miss.answer)
    # hit and miss share the question and frames but not the id: 2 items x (uniform + blind) answers.
    assert report.model_calls == 4 and len(generate_calls) == 4 and report.cached_answers == 0

    # A rerun asks nothing: everything is in the answer cache.
    generate_calls.clear()
    again = calibrate(items, output, mllm=mllm, config=config, cache_path=default_cache_path(output))
    assert generate_calls == [] and again.model_calls == 0 and again.cached_answers == 4
    assert read_qa_jsonl(output) == list(written.values())


def test_stage_one_answerer_finds_calibration_answers_in_the_shared_cache(
    mllm: Any, smoke: list[QAItem], tmp_path: Path, generate_calls: list[int]
) -> None:
    cache = tmp_path / "answers.jsonl"
    config = CalibrationConfig(k=4, generation=GREEDY, frame_max_pixels=PIXELS, batch_size=1)
    calibrate(smoke[:1], tmp_path / "rated.jsonl", mllm=mllm, config=config, cache_path=cache)
    generate_calls.clear()
    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=cache, generation=GREEDY)
    grid = [0.5 + i for i in range(10)]
    outcome = answerer.answer_frames(smoke[0], grid, [1, 3, 6, 8], fps=1.0, max_frames=4096)
    assert outcome.cached and generate_calls == []
    assert outcome.letter == letter_by_hand(mllm, smoke[0], UNIFORM_K4)


def test_gold_probability_difficulty_is_the_mean_gold_probability_shared_with_stage_one(
    mllm: Any, smoke: list[QAItem], tmp_path: Path, generate_calls: list[int]
) -> None:
    """score="gold_probability": c is the gold letter's probability with the uniform frames (by hand), nothing is
    decoded, and stage 1's answerer with the same reward reads those answers from the shared cache."""
    cache = tmp_path / "answers.jsonl"
    sampling = GenerationConfig(max_new_tokens=7, temperature=1.0)  # unused: nothing is decoded or sampled
    config = CalibrationConfig(k=4, frame_max_pixels=PIXELS, batch_size=2, score="gold_probability", overwrite=True,
                               samples=3, generation=sampling)  # fmt: skip
    report = calibrate(smoke, tmp_path / "rated.jsonl", mllm=mllm, config=config, cache_path=cache)
    assert generate_calls == [] and report.model_calls == 4 and report.rated == 4  # one answer each: not sampled
    written = read_qa_jsonl(tmp_path / "rated.jsonl")
    for item in written:
        frames = list(load_frames(item.video, UNIFORM_K4, PIXELS))
        chat = answer_prompt(item.question, list(item.options), frames, UNIFORM_K4, frame_max_pixels=PIXELS)
        expected = mllm.option_probabilities(chat, option_letters(len(item.options))).probabilities[item.answer]
        assert item.difficulty == pytest.approx(expected, abs=1e-4) and 0 < item.difficulty < 1
        assert item.meta["calibration"]["score"] == "gold_probability"

    answerer = MLLMAnswerer(mllm, frame_max_pixels=PIXELS, cache_path=cache, reward="gold_probability")
    grid = [0.5 + i for i in range(10)]
    outcome = answerer.answer_frames(written[0], grid, [1, 3, 6, 8], fps=1.0, max_frames=4096)
    assert outcome.cached and outcome.gold_probability == written[0].difficulty
    with pytest.raises(ValueError, match="score must be"):
        CalibrationConfig(k=4, score="likelihood")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"k": 0}, "k must be an int >= 1, got 0"),
        ({"k": 4, "samples": 2.0}, "samples must be an int >= 1, got 2.0"),
        ({"k": 4, "batch_size": True}, "batch_size must be an int >= 1, got True"),
        ({"k": 4, "fps": math.nan}, "fps must be a finite number > 0, got nan"),
        ({"k": 4, "score": "likelihood"}, "score must be one of ('correct', 'gold_probability'), got 'likelihood'"),
    ],
)
def test_calibration_config_names_the_field_the_rule_and_the_value(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CalibrationConfig(**settings)


def test_batches_go_to_the_model_together(
    mllm: Any, smoke: list[QAItem], tmp_path: Path, generate_calls: list[int]
) -> None:
    config = CalibrationConfig(
        k=4, generation=GREEDY, frame_max_pixels=PIXELS, batch_size=3, blind=True, overwrite=True
    )
    report = calibrate(smoke, tmp_path / "rated.jsonl", mllm=mllm, config=config, cache_path=tmp_path / "a.jsonl")
    # 4 items x 2 conditions = 8 answers in batches of 3: one generate call per batch, of 3, 3 and 2 chats.
    assert generate_calls == [3, 3, 2] and report.model_calls == 8 and report.rated == 4
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(line)["key"] for line in lines}) == 8


def test_sampled_pass_rate_is_the_mean_of_seeded_draws_each_cached(
    mllm: Any, smoke: list[QAItem], tmp_path: Path, generate_calls: list[int]
) -> None:
    sampling = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=3)
    item = dataclasses.replace(smoke[0], options=("man", "that", "frame", "seconds"))
    config = CalibrationConfig(k=4, samples=5, generation=sampling, frame_max_pixels=PIXELS, batch_size=2)
    frames = list(load_frames(item.video, UNIFORM_K4, PIXELS))
    letters = []
    for seed in range(3, 8):
        parse, _ = answer_question(mllm, item.question, item.options, frames, UNIFORM_K4, frame_max_pixels=PIXELS,
                                   generation=dataclasses.replace(sampling, seed=seed))  # fmt: skip
        letters.append(parse.letter if parse and parse.ok else None)
    gold = max("ABCD", key=letters.count)
    item = dataclasses.replace(item, answer=gold)
    generate_calls.clear()
    calibrate([item], tmp_path / "rated.jsonl", mllm=mllm, config=config, cache_path=tmp_path / "a.jsonl")
    rated = read_qa_jsonl(tmp_path / "rated.jsonl")[0]
    assert rated.difficulty == letters.count(gold) / 5 and rated.meta["calibration"]["answers"] == 5
    assert len(generate_calls) == 5  # one call per seed: each draw as if sent alone
    generate_calls.clear()
    calibrate([item], tmp_path / "rated.jsonl", mllm=mllm, config=config, cache_path=tmp_path / "a.jsonl")
    assert generate_calls == [] and read_qa_jsonl(tmp_path / "rated.jsonl")[0].difficulty == rated.difficulty


def test_calibrate_resumes_after_sigkill_without_asking_any_question_twice(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    qa_file = write_smoke_dataset(tmp_path / "smoke", num_items=12, duration=10.0, size=(64, 48))
    output = tmp_path / "rated.jsonl"
    cache = default_cache_path(output)
    args = ["data", "calibrate", str(qa_file), "-o", str(output), "--mllm", str(tiny_qwen_dir), "-k", "4",
            "--frame-max-pixels", str(PIXELS), "--overwrite", "--batch-size", "1"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "msjoe", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if cache.exists() and len(cache.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the calibration ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    answered = len(cache.read_bytes().splitlines())
    assert 3 <= answered < 12 and not output.exists()

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{12 - answered} answers asked, {answered} from the cache" in result.output
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == 12 and len(set(keys)) == 12  # every question asked exactly once over both runs
    assert all(item.difficulty in (0.0, 1.0) for item in read_qa_jsonl(output))


def test_train_difficulty_is_an_alias_of_data_calibrate(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    qa_file = write_smoke_dataset(tmp_path / "smoke", num_items=2, duration=10.0, size=(64, 48))
    items = read_qa_jsonl(qa_file)
    write_qa_jsonl(qa_file, [dataclasses.replace(item, difficulty=None) for item in items])
    common = [str(qa_file), "--mllm", str(tiny_qwen_dir), "-k", "4", "--frame-max-pixels", str(PIXELS)]
    first = runner.invoke(app, ["data", "calibrate", *common, "-o", str(tmp_path / "a.jsonl")])
    second = runner.invoke(app, ["train", "difficulty", *common, "-o", str(tmp_path / "b.jsonl"),
                                 "--answer-cache", str(tmp_path / "a.answers.jsonl")])  # fmt: skip
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "0 answers asked, 2 from the cache" in second.output
    assert [i.difficulty for i in read_qa_jsonl(tmp_path / "a.jsonl")] == [
        i.difficulty for i in read_qa_jsonl(tmp_path / "b.jsonl")
    ]
