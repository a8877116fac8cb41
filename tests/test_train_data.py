"""Training data preparation: QA items -> TrainExamples with the real tiny CLIP (and tiny Qwen for queries), on
the smoke dataset's synthetic videos; bad videos are skipped with their reason; caches are reused across runs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from msjoe.cache import FeatureCache
from msjoe.data import QAItem, read_qa_jsonl
from msjoe.data.smoke import COLOURS, QA_FILE, README_FILE, SMOKE_SOURCE, VIDEO_FPS, write_smoke_dataset
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.mllm import load_mllm
from msjoe.synthetic_video import read_frame_index
from msjoe.train.data import (
    PreparedData,
    QueryWriter,
    ReplyCache,
    load_candidate_frames,
    prepare_examples,
)
from msjoe.train.examples import TrainExample

FPS = 1.0
DURATION = 10.0  # seconds per smoke video: 10 one-second candidates


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def smoke_items(tmp_path_factory: pytest.TempPathFactory) -> list[QAItem]:
    """6 items on 3 videos (two questions per video)."""
    path = write_smoke_dataset(tmp_path_factory.mktemp("smoke"), num_items=6, duration=DURATION, size=(64, 48))
    return read_qa_jsonl(path)


@pytest.fixture(scope="module")
def mllm(tiny_qwen_dir: Path):
    return load_mllm(str(tiny_qwen_dir))


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Spy on ``owner.name`` (a real method keeps running); returns the list of first arguments, one per call."""
    original = getattr(owner, name)
    calls: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


# --- smoke dataset -----------------------------------------------------------------------------------------------


def test_smoke_dataset_is_deterministic_and_loads(tmp_path: Path) -> None:
    first = write_smoke_dataset(tmp_path / "a", num_items=5, seed=3, duration=9.0, size=(64, 48))
    second = write_smoke_dataset(tmp_path / "b", num_items=5, seed=3, duration=9.0, size=(64, 48))
    other = write_smoke_dataset(tmp_path / "c", num_items=5, seed=4, duration=9.0, size=(64, 48))
    assert first.read_text() == second.read_text()
    assert first.read_text() != other.read_text()
    for video in sorted((tmp_path / "a" / "videos").iterdir()):
        assert video.read_bytes() == (tmp_path / "b" / "videos" / video.name).read_bytes()
    assert "SMOKE-TEST DATA" in (tmp_path / "a" / README_FILE).read_text()

    items = read_qa_jsonl(first)
    assert len(items) == 5 and len({item.video for item in items}) == 3  # two questions a video, odd count
    assert first.name == QA_FILE
    for item in items:
        assert item.source == SMOKE_SOURCE and item.meta["synthetic"] is True
        assert Path(item.video).is_file()
        assert len(item.options) == 4 and len(set(item.options)) == 4 and set(item.options) <= set(COLOURS)
        assert item.difficulty is not None and 0 < item.difficulty < 1
        ((start, end),) = item.evidence
        assert 0 <= start < end <= 9.0
    # The relative video paths make the folder movable.
    assert all(not json.loads(line)["video"].startswith("/") for line in first.read_text().splitlines())


def test_smoke_video_shows_the_gold_colour_inside_the_evidence_span(smoke_items: list[QAItem]) -> None:
    from msjoe.video import decode_frames

    for item in smoke_items[:2]:
        ((start, end),) = item.evidence
        middle = (start + end) / 2
        frame = decode_frames(item.video, [middle], None)[0]
        band = frame.shape[0] // 8
        background = frame[band + 1 :, :].reshape(-1, 3).astype(float)
        # The moving square covers part of the frame: the most common colour is the flash's.
        values, counts = np.unique(background.round(-1), axis=0, return_counts=True)
        seen = values[counts.argmax()]
        gold = item.options["ABCD".index(item.answer)]
        assert np.abs(seen - np.array(COLOURS[gold])).max() <= 25, (seen, gold)


def test_smoke_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_items"):
        write_smoke_dataset(tmp_path, num_items=0)
    with pytest.raises(ValueError, match="duration"):
        write_smoke_dataset(tmp_path, duration=3.0)
    with pytest.raises(ValueError, match="size"):
        write_smoke_dataset(tmp_path, size=(65, 48))


# --- prepare_examples --------------------------------------------------------------------------------------------


def bad_items(smoke_items: list[QAItem], folder: Path) -> dict[str, QAItem]:
    """Items whose video is missing, not a video or truncated, and items without answer or difficulty."""
    not_a_video = folder / "notes.mp4"
    not_a_video.write_text("this is not a video\n" * 50)
    truncated = folder / "truncated.mp4"
    data = Path(smoke_items[0].video).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    base = smoke_items[0]
    return {
        "missing": dataclasses.replace(base, id="missing", video=str(folder / "missing.mp4")),
        "not-a-video": dataclasses.replace(base, id="not-a-video", video=str(not_a_video)),
        "truncated": dataclasses.replace(base, id="truncated", video=str(truncated)),
        "no-answer": dataclasses.replace(base, id="no-answer", answer=None),
        "no-difficulty": dataclasses.replace(base, id="no-difficulty", difficulty=None),
    }


def test_bad_items_are_skipped_with_their_reason_and_the_rest_prepared(
    smoke_items: list[QAItem], encoder: DualEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = bad_items(smoke_items, tmp_path)
    items = [bad["missing"], smoke_items[0], bad["truncated"], smoke_items[1], bad["no-answer"], smoke_items[2]]
    items += [bad["not-a-video"], bad["no-difficulty"], smoke_items[3]]
    with caplog.at_level(logging.WARNING, logger="msjoe.train.data"):
        prepared = prepare_examples(
            items, encoder=encoder, cache=FeatureCache(tmp_path / "cache"), fps=FPS, require_difficulty=True
        )
    assert isinstance(prepared, PreparedData)
    assert [e.id for e in prepared.examples] == [item.id for item in smoke_items[:4]]  # input order kept
    kinds = {s.id: s.kind for s in prepared.skipped}
    assert kinds == {
        "missing": "VideoNotFoundError",
        "not-a-video": "NotAVideoError",
        "truncated": "CorruptVideoError",
        "no-answer": "no_answer",
        "no-difficulty": "no_difficulty",
    }
    assert prepared.skipped_counts() == {
        "VideoNotFoundError": 1,
        "NotAVideoError": 1,
        "CorruptVideoError": 1,
        "no_answer": 1,
        "no_difficulty": 1,
    }
    reasons = {s.id: s.reason for s in prepared.skipped}
    assert "missing.mp4" in reasons["missing"] and "truncated" in reasons["truncated"].lower()
    assert prepared.videos == 2
    assert "4 examples from 2 videos; skipped 5 items" in prepared.summary()
    # One warning per skipped item naming it, and a summary line.
    messages = [r.getMessage() for r in caplog.records]
    for name in kinds:
        assert sum(f"skipping item {name} " in m for m in messages) == 1
    assert any("skipped 5 items" in m for m in messages)

    for example in prepared.examples:
        assert example.queries == (example.qa.question,)
        assert example.sim is not None and example.sim.shape == (1, example.features.num_frames)
        assert example.features.num_frames == int(DURATION * FPS)
        assert example.difficulty == example.qa.difficulty
        # sim is the cosine of the question's text embedding with each cached frame embedding.
        text = encoder.encode_texts([example.qa.question])
        torch.testing.assert_close(example.sim, text @ example.features.embeddings.T, atol=1e-4, rtol=1e-4)


def test_items_without_difficulty_are_kept_for_stage_2(smoke_items: list[QAItem], encoder: DualEncoder) -> None:
    item = dataclasses.replace(smoke_items[0], difficulty=None)
    prepared = prepare_examples([item], encoder=encoder, cache=None, fps=FPS, queries=None)
    (example,) = prepared.examples
    assert example.queries == () and example.sim is None and not prepared.skipped


def test_a_shared_video_is_indexed_once(
    smoke_items: list[QAItem], encoder: DualEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = count_calls(monkeypatch, encoder, "encode_images")
    items = smoke_items[:4]  # two videos, two items each
    prepared = prepare_examples(items, encoder=encoder, cache=None, fps=FPS)
    frames_encoded = sum(len(batch) for batch in encoded)
    assert frames_encoded == 2 * int(DURATION * FPS)  # each video's 10 candidates once, not once per item
    first, second, third, fourth = prepared.examples
    assert first.features is second.features and third.features is fourth.features
    assert first.features is not third.features

    # With a feature cache, a second preparation encodes nothing: every video is a cache hit.
    cache = FeatureCache(tmp_path / "cache")
    prepare_examples(items, encoder=encoder, cache=cache, fps=FPS)
    encoded.clear()
    again = prepare_examples(items, encoder=encoder, cache=cache, fps=FPS)
    assert encoded == [] and len(again.examples) == 4


def test_videos_with_too_few_candidates_are_skipped(smoke_items: list[QAItem], encoder: DualEncoder) -> None:
    prepared = prepare_examples(smoke_items[:1], encoder=encoder, cache=None, fps=FPS, min_frames=11)
    assert prepared.examples == [] and prepared.skipped[0].kind == "too_few_frames"
    assert "10 candidate frames, fewer than 11" in prepared.skipped[0].reason


def test_prepare_rejects_bad_arguments(smoke_items: list[QAItem], encoder: DualEncoder) -> None:
    with pytest.raises(ValueError, match="queries"):
        prepare_examples(smoke_items, encoder=encoder, cache=None, queries="mllm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_frames"):
        prepare_examples(smoke_items, encoder=encoder, cache=None, min_frames=0)


# --- frames of an example ----------------------------------------------------------------------------------------


def example_frames(example: TrainExample, indices: Any, max_pixels: int, **options: Any) -> np.ndarray:
    """The candidate frames of ``example`` on its own grid, as the stage-1 answerer loads them."""
    features = example.features
    return load_candidate_frames(
        example.qa.video,
        features.timestamps,
        indices,
        max_pixels,
        fps=features.fps,
        max_frames=features.max_frames,
        info=features.video_info,
        **options,
    )


def test_example_frames_are_the_chosen_candidates(
    smoke_items: list[QAItem], encoder: DualEncoder, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    (example,) = prepare_examples(smoke_items[:1], encoder=encoder, cache=cache, fps=FPS).examples
    chosen = [7, 1, 4]
    frames = example_frames(example, torch.tensor(chosen), 64 * 48)
    assert frames.shape == (3, 48, 64, 3)
    # Each frame carries its index in the video as a barcode: candidate i is at i + 0.5 s (1 fps grid).
    expected = [round(example.features.timestamps[i] * VIDEO_FPS) for i in chosen]
    assert [read_frame_index(frame) for frame in frames] == expected

    # From a frame store built while preparing: the same frames (up to JPEG error), no decoding.
    store = FrameStore(tmp_path / "frames", max_pixels=64 * 48)
    (stored,) = prepare_examples(smoke_items[:1], encoder=encoder, cache=cache, fps=FPS, frame_store=store).examples
    assert store.has(stored.qa.video, fps=FPS, max_frames=stored.features.max_frames)
    from_store = example_frames(stored, chosen, 64 * 48, frame_store=store)
    assert [read_frame_index(frame) for frame in from_store] == expected
    assert np.abs(from_store.astype(int) - frames.astype(int)).mean() < 3

    with pytest.raises(IndexError, match="outside"):
        example_frames(example, [10], 64 * 48)


# --- queries of the frozen MLLM ----------------------------------------------------------------------------------


def generate_calls(monkeypatch: pytest.MonkeyPatch, mllm: Any) -> list[Any]:
    return count_calls(monkeypatch, mllm.model, "generate")


def test_written_queries_are_cached_across_runs(
    smoke_items: list[QAItem],
    encoder: DualEncoder,
    mllm: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    items = smoke_items[:3]
    cache = FeatureCache(tmp_path / "features")
    path = tmp_path / "queries.jsonl"
    calls = generate_calls(monkeypatch, mllm)

    def prepare(writer: QueryWriter) -> list[tuple[str, ...]]:
        prepared = prepare_examples(items, encoder=encoder, cache=cache, fps=FPS, queries=writer)
        for example in prepared.examples:
            assert example.sim is not None and example.sim.shape == (len(example.queries), example.features.num_frames)
        return [example.queries for example in prepared.examples]

    writer = QueryWriter(mllm, k=4, cache_path=path, max_new_tokens=24)
    first = prepare(writer)
    assert len(calls) == 3 and writer.calls == 3 and writer.cache_hits == 0
    assert all(1 <= len(queries) <= 4 for queries in first)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == [item.id for item in items]
    assert all(r["queries"] == list(q) for r, q in zip(records, first, strict=True))

    # A new run (a new writer reading the file) asks the model nothing and gets the same queries.
    calls.clear()
    rerun = QueryWriter(mllm, k=4, cache_path=path, max_new_tokens=24)
    assert prepare(rerun) == first and calls == [] and rerun.cache_hits == 3

    # A crash mid-write leaves a partial last line: it is dropped with a warning and only that item is asked again.
    text = path.read_text()
    path.write_text(text[: len(text) - 20])
    with caplog.at_level(logging.WARNING, logger="msjoe.train.data"):
        repaired = QueryWriter(mllm, k=4, cache_path=path, max_new_tokens=24)
    assert any("partial last line" in r.getMessage() for r in caplog.records)
    assert prepare(repaired) == first and len(calls) == 1 and repaired.calls == 1
    assert all(json.loads(line)["key"] for line in path.read_text().splitlines())  # the file is whole again

    # Settings that change the reply are part of the key: another preview budget asks again.
    calls.clear()
    prepare(QueryWriter(mllm, k=6, cache_path=path, max_new_tokens=24))
    assert len(calls) == 3


def test_an_edited_question_is_asked_again(
    smoke_items: list[QAItem], encoder: DualEncoder, mllm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "queries.jsonl"
    item = smoke_items[0]
    prepare_examples([item], encoder=encoder, cache=None, fps=FPS, queries=QueryWriter(mllm, k=4, cache_path=path))
    calls = generate_calls(monkeypatch, mllm)
    edited = dataclasses.replace(item, question="Which colour fills the screen first?")
    prepare_examples([edited], encoder=encoder, cache=None, fps=FPS, queries=QueryWriter(mllm, k=4, cache_path=path))
    assert len(calls) == 1


# --- the reply cache file ----------------------------------------------------------------------------------------


def test_reply_cache_skips_damaged_lines_and_keeps_a_whole_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "replies.jsonl"
    cache = ReplyCache(path)
    cache.put("k1", {"reply": "A"})
    cache.put("k2", {"reply": "B"})
    lines = path.read_text().splitlines()
    # A garbage line in the middle, and a last record whose newline was lost.
    path.write_text(lines[0] + "\n" + '{"key": "broken' + "\n" + lines[1])
    with caplog.at_level(logging.WARNING, logger="msjoe.train.data"):
        loaded = ReplyCache(path)
    assert loaded.get("k1") == {"key": "k1", "reply": "A"} and loaded.get("k2") == {"key": "k2", "reply": "B"}
    assert loaded.skipped_lines == 1
    assert any(":2: skipping an unreadable cache line" in r.getMessage() for r in caplog.records)
    loaded.put("k3", {"reply": "C"})
    assert ReplyCache(path).get("k3") == {"key": "k3", "reply": "C"}  # appended on a line of its own

    # Later records of a key win.
    loaded.put("k1", {"reply": "D"})
    assert ReplyCache(path).get("k1")["reply"] == "D" and len(ReplyCache(path)) == 3


def test_reply_cache_reads_other_processes_files_without_touching_them(tmp_path: Path) -> None:
    other = tmp_path / "rank1.jsonl"
    writer = ReplyCache(other)
    writer.put("k1", {"reply": "A"})
    writer.put("k2", {"reply": "B"})
    # The other process is mid-write: its last line has no newline yet and must be neither read nor repaired.
    torn = other.read_bytes() + b'{"key": "k3", "rep'
    other.write_bytes(torn)

    own = tmp_path / "rank0.jsonl"
    cache = ReplyCache(own, also_read=[other, tmp_path / "rank2.jsonl"])  # a file not written yet is fine
    assert cache.get("k1") == {"key": "k1", "reply": "A"} and cache.get("k2") == {"key": "k2", "reply": "B"}
    assert "k3" not in cache and cache.skipped_lines == 0
    cache.put("k4", {"reply": "D"})
    assert other.read_bytes() == torn  # never repaired or written
    assert [json.loads(line)["key"] for line in own.read_text().splitlines()] == ["k4"]
