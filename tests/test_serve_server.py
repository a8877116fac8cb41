"""The service on a real uvicorn server on 127.0.0.1: concurrent questions, an upload over the limit, path traversal,
and a restart that finds the cached features, registry and answers again."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from _chat_server import Handler, ScriptedServer
from _serve_helpers import RealServer, scripted_replies, video_root, wait_for_job  # noqa: F401  (fixture)
from msjoe.cache import FeatureCache
from msjoe.features import DualEncoder
from msjoe.mllm import MLLM, GenerationConfig, load_mllm
from msjoe.mllm.base import Message
from msjoe.pipeline import PipelineConfig, VideoQA
from msjoe.serve import ServeConfig, VideoService, create_app

VIDEOS = {"short.mp4": 6, "sub/long.mp4": 9}  # path under the root -> candidates at 1 fps


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


def index_all(client: httpx.Client) -> dict[str, str]:
    """Register every test video and wait for its index; path -> video id."""
    ids = {}
    for path in VIDEOS:
        registered = client.post("/api/videos", json={"path": path}).json()
        if registered["job"] is not None:
            assert wait_for_job(client, registered["job"]["id"])["state"] == "done"
        ids[path] = registered["video"]["id"]
    return ids


def ask(url: str, video_id: str, question: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/api/ask", json={"video_id": video_id, "question": question, "options": ["x", "y"]})
        assert response.status_code == 200, response.text
        return response.json()


def in_pairs(handler: Handler, body: dict[str, Any]) -> None:
    """Wait (up to 10 s) until a second request is in flight, then reply: two questions asked together overlap in
    the MLLM even on a loaded machine, so the test sees real concurrency."""
    deadline = time.monotonic() + 10
    while handler.server.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    scripted_replies(handler, body)


def test_concurrent_questions_on_two_videos_get_their_own_answers(
    server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path
) -> None:
    qa = VideoQA(
        encoder, load_mllm(server.url, model="m", max_retries=0), FeatureCache(tmp_path / "c"), PipelineConfig(k=3)
    )
    service = VideoService(qa, ServeConfig(video_roots=[video_root], state_dir=tmp_path / "state"))
    with RealServer(create_app(service)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        ids = index_all(client)
        server.default = in_pairs
        jobs = [(ids[path], f"Which one is it? [Q-{n}]") for n, path in enumerate(VIDEOS)]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda job: ask(live.url, *job), jobs))
        assert server.max_in_flight == 2  # the two questions were in the (unlocked, HTTP) MLLM together
        for n, ((path, candidates), answer) in enumerate(zip(VIDEOS.items(), answers, strict=True)):
            assert answer["reply"] == f"B. Q-{n}" and answer["question"].endswith(f"[Q-{n}]")
            assert answer["video_id"] == ids[path] and answer["video"] == f"videos/{path}"
            assert answer["num_candidates"] == candidates and len(answer["similarity"][0]) == candidates
            assert all(t < candidates for t in answer["chosen_timestamps"])
        assert {a["id"] for a in client.get("/api/answers").json()} == {a["id"] for a in answers}


class CountingMLLM(MLLM):
    """Passes each chat to the real tiny Qwen2.5-VL and records how many chats ran at once."""

    name = "counting"

    def __init__(self, inner: MLLM) -> None:
        self.inner = inner
        self.model_id = getattr(inner, "model_id", "tiny")
        self.running = self.most_at_once = self.calls = 0
        self._count = threading.Lock()

    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        with self._count:
            self.running += 1
            self.calls += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(0.05)  # widen the window in which a second chat could slip in
            return self.inner.chat(messages, generation)
        finally:
            with self._count:
                self.running -= 1


def test_a_local_model_answers_one_request_at_a_time(
    tiny_qwen_dir: Path, encoder: DualEncoder, video_root: Path, tmp_path: Path
) -> None:
    mllm = CountingMLLM(load_mllm(str(tiny_qwen_dir)))
    config = PipelineConfig(
        k=2, query_generation=GenerationConfig(max_new_tokens=6), answer_generation=GenerationConfig(max_new_tokens=3)
    )
    qa = VideoQA(encoder, mllm, FeatureCache(tmp_path / "c"), config)
    service = VideoService(qa, ServeConfig(video_roots=[video_root], state_dir=tmp_path / "state"))
    with RealServer(create_app(service)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        ids = index_all(client)
        jobs = [(ids[path], f"question {n} about {path}") for n, path in enumerate([*VIDEOS, *VIDEOS])]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda job: ask(live.url, *job), jobs))
    assert mllm.calls == 2 * len(jobs) and mllm.most_at_once == 1
    for (video_id, question), answer in zip(jobs, answers, strict=True):
        assert answer["video_id"] == video_id and answer["question"] == question
        assert answer["num_candidates"] == VIDEOS[answer["video"].removeprefix("videos/")]


def test_upload_limit_and_path_traversal_over_http(
    server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path
) -> None:
    qa = VideoQA(encoder, load_mllm(server.url, model="m"), FeatureCache(tmp_path / "c"), PipelineConfig(k=2))
    config = ServeConfig(video_roots=[video_root], state_dir=tmp_path / "state", max_upload_bytes=20_000)
    service = VideoService(qa, config)
    with RealServer(create_app(service)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        too_big = client.post("/api/videos/upload?filename=big.mp4", content=b"\0" * 50_000)
        assert too_big.status_code == 413 and "limit is 20000" in too_big.json()["detail"]
        assert list(service.uploads.iterdir()) == []
        for path in ("../outside/secret.mp4", "linkdir/secret.mp4", str(video_root / "short.mp4")):
            refused = client.post("/api/videos", json={"path": path})
            assert refused.status_code == 403, (path, refused.text)
            assert str(video_root) not in refused.text and "Traceback" not in refused.text
        for raw in ("/static/..%2f..%2fapp.py", "/static/%2e%2e/%2e%2e/app.py", "/api/answers/..%2F..%2Fetc%2Fpasswd"):
            assert client.get(raw).status_code == 404, raw
        assert client.get("/api/videos").json() == []


def test_a_restart_finds_the_cache_the_videos_and_the_answers(
    server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path
) -> None:
    server.default = scripted_replies

    def start(state: Path) -> RealServer:
        qa = VideoQA(encoder, load_mllm(server.url, model="m"), FeatureCache(tmp_path / "cache"), PipelineConfig(k=3))
        return RealServer(create_app(VideoService(qa, ServeConfig(video_roots=[video_root], state_dir=state))))

    with start(tmp_path / "state") as live, httpx.Client(base_url=live.url, timeout=60) as client:
        registered = client.post("/api/videos", json={"path": "short.mp4"}).json()
        assert wait_for_job(client, registered["job"]["id"])["cached"] is False
        first = client.post(
            "/api/ask", json={"video_id": registered["video"]["id"], "question": "q [Q-1]", "options": ["a", "b"]}
        ).json()

    entries = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 2  # the features and the frame store's entry (frames are stored by default)
    stamp = [entry.stat().st_mtime_ns for entry in entries]
    with start(tmp_path / "state") as live, httpx.Client(base_url=live.url, timeout=60) as client:
        (video,) = client.get("/api/videos").json()
        assert video["state"] == "indexed" and video["job"] == registered["job"]["id"]  # no new job
        assert client.post("/api/videos", json={"path": "short.mp4"}).json()["job"] is None
        assert [a["id"] for a in client.get("/api/answers").json()] == [first["id"]]
        assert 'id="chosen-2"' in client.get(first["explain_url"]).text
        again = client.post(
            "/api/ask", json={"video_id": video["id"], "question": "q [Q-2]", "options": ["a", "b"]}
        ).json()
        assert again["reply"] == "B. Q-2" and again["chosen_timestamps"] == first["chosen_timestamps"]

    # A new service with an empty state but the same feature cache: indexing reads the cache, decodes nothing.
    with start(tmp_path / "state2") as live, httpx.Client(base_url=live.url, timeout=60) as client:
        registered = client.post("/api/videos", json={"path": "short.mp4"}).json()
        job = wait_for_job(client, registered["job"]["id"])
        assert job["state"] == "done" and job["cached"] is True
    assert [e.stat().st_mtime_ns for e in entries] == stamp and sorted(
        (tmp_path / "cache").rglob("*.safetensors")
    ) == entries
