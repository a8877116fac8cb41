"""The MSJoE inference flow end to end: a tiny random Qwen2.5-VL and CLIP on generated videos, and a scripted
chat-completions server on 127.0.0.1 where a test needs to choose the MLLM's replies."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import msjoe.index
import msjoe.pipeline
import msjoe.video
from _chat_server import ScriptedServer, completion, status
from msjoe.cache import FeatureCache
from msjoe.features import DualEncoder
from msjoe.frame_store import FrameStore
from msjoe.mllm import MLLM, GenerationConfig, ImagePart, Message, load_mllm
from msjoe.mllm.prompts import PREVIEW_MAX_PIXELS
from msjoe.pipeline import PipelineConfig, VideoQA, preview_indices
from msjoe.synthetic_video import Event, event_color, read_frame_index, write_video

VIDEO_FPS = 5.0
OPTIONS = ["red", "green", "blue", "yellow"]


class RecordingMLLM(MLLM):
    """Passes every chat to a real backend and keeps the messages, so a test can see what the model was shown."""

    name = "recording"

    def __init__(self, inner: MLLM) -> None:
        self.inner = inner
        self.chats: list[list[Message]] = []

    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        self.chats.append(messages)
        return self.inner.chat(messages, generation)


def images(messages: list[Message]) -> list[ImagePart]:
    return [part for message in messages for part in message.content if isinstance(part, ImagePart)]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s at 5 fps, 128x72: 30 one-second candidates; a coloured event at 10-14 s."""
    folder = tmp_path_factory.mktemp("pipeline-video")
    events = [Event(10.0, 14.0, event_color(1))]
    return write_video(folder / "v.mp4", duration=30.0, fps=VIDEO_FPS, size=(128, 72), events=events, gop=25)


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


def scripted_qa(server: ScriptedServer, encoder: DualEncoder, cache_dir: Path, **config: object) -> VideoQA:
    mllm = load_mllm(server.url, model="m", timeout=10.0, max_retries=0)
    return VideoQA(encoder, mllm, FeatureCache(cache_dir), PipelineConfig(**config))


def test_ask_end_to_end_with_tiny_qwen(tiny_qwen_dir: Path, encoder: DualEncoder, video: Path, tmp_path: Path) -> None:
    mllm = RecordingMLLM(load_mllm(str(tiny_qwen_dir)))
    config = PipelineConfig(k=6, query_generation=GenerationConfig(max_new_tokens=12))
    qa = VideoQA(encoder, mllm, FeatureCache(tmp_path), config)
    answer = qa.ask(video, "What colour is the screen during the event?", OPTIONS)

    assert isinstance(answer.reply, str)
    assert answer.status in {"ok", "ambiguous", "unparsed"}
    assert (answer.letter in "ABCD") if answer.status == "ok" else answer.letter is None
    assert 1 <= len(answer.queries) <= 4
    assert answer.similarity is not None and answer.similarity.shape == (len(answer.queries), 30)
    assert answer.chosen_timestamps == sorted(answer.chosen_timestamps) and len(set(answer.chosen_indices)) == 6
    assert answer.chosen_timestamps == [float(answer.candidate_timestamps[i]) for i in answer.chosen_indices]
    assert {"index", "query_reasoning", "similarity", "selection", "answer"} <= set(answer.timings)

    # Two turns: K/2 low-resolution previews, then exactly the K key frames (previews not shown again).
    query_turn, answer_turn = mllm.chats
    previews, key_frames = images(query_turn), images(answer_turn)
    assert len(previews) == 3 and all(p.max_pixels == PREVIEW_MAX_PIXELS for p in previews)
    assert len(key_frames) == 6 and all(p.max_pixels == config.answer_max_pixels for p in key_frames)
    # The frames shown are the frames displayed at the chosen timestamps (barcode = frame index).
    shown = [read_frame_index(p.pixels) for p in key_frames]
    assert shown == [int(np.floor(t * VIDEO_FPS + 1e-6)) for t in answer.chosen_timestamps]
    assert [read_frame_index(p.pixels) for p in previews] == [
        int(np.floor(t * VIDEO_FPS + 1e-6)) for t in answer.preview_timestamps
    ]


def test_unparseable_queries_fall_back_to_the_question(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    server.script.extend([status(200, completion("")), status(200, completion("The answer is (B)."))])
    answer = scripted_qa(server, encoder, tmp_path, k=4).ask(video, "Which colour appears?", OPTIONS)
    assert answer.queries == ["Which colour appears?"] and answer.queries_from_question
    assert answer.similarity is not None and answer.similarity.shape == (1, 30)
    assert (answer.letter, answer.status) == ("B", "ok")


def test_parsed_queries_drive_the_similarity(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    reply = '<queries>["a red screen", "a white square", "a dark square"]</queries>'
    server.script.extend([status(200, completion(reply)), status(200, completion("C"))])
    answer = scripted_qa(server, encoder, tmp_path, k=4, sampler="topk").ask(video, "Which colour?", OPTIONS)
    assert answer.queries == ["a red screen", "a white square", "a dark square"] and not answer.queries_from_question
    expected = (
        encoder.encode_texts(answer.queries)
        @ msjoe.index.index_video(video, encoder, FeatureCache(tmp_path)).embeddings.T
    )
    torch.testing.assert_close(answer.similarity, expected, atol=5e-4, rtol=0)  # float16 cache
    best = sorted(torch.topk(expected.max(dim=0).values, 4).indices.tolist())
    assert answer.chosen_indices == best and answer.letter == "C"


def test_uniform_sampler_asks_no_queries(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    server.script.append(status(200, completion("A")))
    answer = scripted_qa(server, encoder, tmp_path, k=5, sampler="uniform").ask(video, "Which colour?", OPTIONS)
    assert len(server.requests) == 1  # the answer turn only
    assert answer.queries == [] and answer.similarity is None and answer.preview_timestamps == []
    assert answer.chosen_indices == [3, 9, 15, 21, 27]
    assert answer.letter == "A"


def test_unparseable_answer_is_recorded_not_guessed(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    server.script.append(status(200, completion("I cannot tell from these frames.")))
    answer = scripted_qa(server, encoder, tmp_path, k=4, sampler="uniform").ask(video, "Which colour?", OPTIONS)
    assert answer.letter is None and answer.status == "unparsed"
    assert answer.reply == "I cannot tell from these frames."


def test_free_form_question_returns_the_reply(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    server.script.extend([status(200, completion('<queries>["a square"]</queries>')), status(200, completion("Red."))])
    answer = scripted_qa(server, encoder, tmp_path, k=4).ask(video, "What colour is the screen?")
    assert (answer.letter, answer.status, answer.reply) == (None, "free-form", "Red.")
    assert "A." not in server.requests[-1][3]["messages"][-1]["content"][-1]["text"]


@pytest.mark.parametrize("store_frames", [True, False])
def test_second_question_on_a_video_decodes_no_candidates(
    server: ScriptedServer,
    encoder: DualEncoder,
    video: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store_frames: bool,
) -> None:
    decoded: list[int] = []
    real_iter_frames = msjoe.index.iter_frames_at_sizes

    def counting_iter_frames(*args: object, **kwargs: object):
        for batches in real_iter_frames(*args, **kwargs):
            decoded.append(len(batches[0]))
            yield batches

    probed: list[Path] = []
    real_probe = msjoe.video.probe

    def counting_probe(path: str | Path) -> msjoe.video.VideoInfo:
        probed.append(Path(path))
        return real_probe(path)

    monkeypatch.setattr(msjoe.index, "iter_frames_at_sizes", counting_iter_frames)
    monkeypatch.setattr(msjoe.video, "probe", counting_probe)
    monkeypatch.setattr(msjoe.index, "probe", counting_probe)
    qa = scripted_qa(server, encoder, tmp_path, k=4, sampler="bolt", store_frames=store_frames)
    qa.ask(video, "First question?", OPTIONS)
    assert sum(decoded) == 30
    probed.clear()
    answer = qa.ask(video, "Second question?", OPTIONS)
    assert sum(decoded) == 30  # the cached embeddings answered the second question's scoring
    assert len(answer.preview_timestamps) == 2 and len(answer.chosen_timestamps) == 4
    assert probed == []  # previews and key frames were decoded at the cached probe's size, without probing again


def test_usampler_without_weights_is_refused(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="trained weights"):
        scripted_qa(server, encoder, tmp_path, sampler="usampler").ask(video, "Which colour?", OPTIONS)


def test_preview_indices_are_spread_and_at_least_one() -> None:
    assert preview_indices(30, 6) == [5, 15, 25]
    assert preview_indices(30, 1) == [15]
    assert preview_indices(2, 32) == [0, 1]


def test_frame_store_serves_previews_and_key_frames(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real_decode_frames = msjoe.pipeline.video_io.decode_frames

    def counting_decode_frames(path: Path, timestamps: list[float], *args: object, **kwargs: object) -> np.ndarray:
        decoded.append(len(timestamps))
        return real_decode_frames(path, timestamps, *args, **kwargs)

    monkeypatch.setattr(msjoe.pipeline.video_io, "decode_frames", counting_decode_frames)
    reply = '<queries>["a white square"]</queries>'
    server.default = status(200, completion(reply))
    mllm = RecordingMLLM(load_mllm(server.url, model="m", timeout=10.0, max_retries=0))
    qa = VideoQA(encoder, mllm, FeatureCache(tmp_path), PipelineConfig(k=6, store_frames=True))
    for question in ("First?", "Second?"):
        answer = qa.ask(video, question, OPTIONS)
        previews, key_frames = images(mllm.chats[-2]), images(mllm.chats[-1])
        # JPEG keeps the barcodes readable: the stored frames are the frames displayed at those times.
        assert [read_frame_index(p.pixels) for p in key_frames] == [
            int(np.floor(t * VIDEO_FPS + 1e-6)) for t in answer.chosen_timestamps
        ]
        assert len(previews) == 3
    assert decoded == []  # neither question sought in the video for its MLLM frames
    assert qa.frame_store is not None and any(qa.frame_store.root.rglob("*.safetensors"))


def test_frames_stored_by_index_are_used_without_store_frames(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path)
    msjoe.index.index_video(
        video, encoder, cache, frame_store=FrameStore.for_cache(cache)
    )  # `msjoe index --store-frames`
    monkeypatch.setattr(msjoe.pipeline.video_io, "decode_frames", lambda *a, **k: pytest.fail("decoded the video"))
    server.default = status(200, completion("A"))
    answer = scripted_qa(server, encoder, tmp_path, k=4, sampler="uniform").ask(video, "Which colour?", OPTIONS)
    assert answer.letter == "A"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"k": 0}, "k must be an int >= 1, got 0"),
        ({"k": 8.0}, "k must be an int >= 1, got 8.0"),
        ({"max_queries": 5}, "max_queries must be an int in [1, 4], got 5"),
        ({"fps": 0}, "fps must be a finite number > 0, got 0"),
        ({"answer_max_pixels": 0}, "answer_max_pixels must be an int >= 1, got 0"),
        ({"store_frames": "no"}, "store_frames must be true or false, got 'no'"),
        ({"sampler": "nope"}, "unknown sampler 'nope'"),
        ({"sampler": "usampler"}, "needs trained weights"),
        ({"sampler": "bolt", "sampler_checkpoint": "x"}, "takes no checkpoint"),
    ],
)
def test_pipeline_config_rejects_bad_settings(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PipelineConfig(**settings)


def test_frames_are_stored_by_default_and_a_read_only_cache_still_answers(
    server: ScriptedServer,
    encoder: DualEncoder,
    video: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert PipelineConfig().store_frames
    server.default = status(200, completion("A"))
    stored = tmp_path / "writable"
    scripted_qa(server, encoder, stored, k=4, sampler="uniform").ask(video, "Which colour?", OPTIONS)
    assert len(list((stored / "frames").rglob("*.safetensors"))) == 1

    cache = tmp_path / "read-only"
    msjoe.index.index_video(video, encoder, FeatureCache(cache))  # features only, as indexed before frames were stored
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:  # as on a read-only mount, also for root
        if mode & os.W_OK and Path(str(path)).resolve().is_relative_to(cache.resolve()):
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with caplog.at_level(logging.WARNING, logger="msjoe.pipeline"):
        answer = scripted_qa(server, encoder, cache, k=4, sampler="uniform").ask(video, "Which colour?", OPTIONS)
    assert answer.letter == "A" and "frames are not stored for later questions" in caplog.text
    assert len(list(cache.glob("*/*.safetensors"))) == 1 and not list((cache / "frames").rglob("*.safetensors"))
