"""The HTTP API through FastAPI's test client: the tiny CLIP, and the scripted chat server (a real HTTP server on
127.0.0.1) as the MLLM so the replies are known. Real uvicorn and the browser are in test_serve_server.py and
test_serve_browser.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from _chat_server import ScriptedServer
from _serve_helpers import scripted_replies, video_root, wait_for_job, wait_until  # noqa: F401  (fixture)
from msjoe.cache import FeatureCache
from msjoe.cli import app as cli_app
from msjoe.features import DualEncoder
from msjoe.mllm import load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA
from msjoe.serve import ServeConfig, VideoService, create_app
from msjoe.serve.errors import PathRefused
from msjoe.serve.paths import VideoRoots
from msjoe.synthetic_video import write_video


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


def make_service(
    server: ScriptedServer, encoder: DualEncoder, root: Path, state: Path, **config: object
) -> VideoService:
    server.default = scripted_replies
    mllm = load_mllm(server.url, model="m", max_retries=0)
    qa = VideoQA(encoder, mllm, FeatureCache(state / "cache"), PipelineConfig(k=4))
    return VideoService(qa, ServeConfig(video_roots=[root], state_dir=state, **config))


@pytest.fixture
def service(server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path) -> VideoService:
    return make_service(server, encoder, video_root, tmp_path)


@pytest.fixture
def client(service: VideoService) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as client:  # `with`: runs the app's startup (the indexing worker)
        yield client


def register(client: TestClient, path: str) -> dict:
    response = client.post("/api/videos", json={"path": path})
    assert response.status_code == 202, response.text
    return response.json()


def indexed(client: TestClient, path: str) -> str:
    registered = register(client, path)
    if registered["job"] is not None:
        assert wait_for_job(client, registered["job"]["id"])["state"] == "done"
    return registered["video"]["id"]


def test_schema_page_and_health(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/ask", "/api/videos", "/api/videos/upload", "/api/jobs/{job_id}", "/api/answers", "/health"} <= set(
        schema["paths"]
    )
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 404  # its page would load scripts from a CDN

    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page.text)  # nothing from another host
    for asset in re.findall(r"""(?:src|href)="(/static/[^"]+)""", page.text):
        assert client.get(asset).status_code == 200
    assert client.get("/static/../app.py").status_code == 404

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["auth"] is False and health["queue"]["capacity"] == 16
    assert health["models"]["clip"].endswith("tiny-clip0") and "bolt" in health["samplers"]


def test_register_index_and_list(client: TestClient) -> None:
    roots = client.get("/api/roots").json()
    # Links are not followed, not even listed; the playlist is listed (by its suffix) but refused when registered.
    assert roots == [{"name": "videos", "files": ["playlist.mp4", "short.mp4", "sub/long.mp4"], "truncated": False}]
    registered = register(client, "sub/long.mp4")
    assert registered["video"]["name"] == "videos/sub/long.mp4" and "path" not in registered["video"]
    job = wait_for_job(client, registered["job"]["id"])
    assert (
        job["state"] == "done" and job["cached"] is False and job["progress"]["done"] == job["progress"]["total"] == 9
    )
    video = client.get(f"/api/videos/{registered['video']['id']}").json()
    assert video["state"] == "indexed" and video["candidates"] == 9 and video["duration"] == pytest.approx(9.0, abs=0.3)
    again = register(client, "./sub/long.mp4")  # the same content: the same video, nothing to do
    assert again["video"]["id"] == registered["video"]["id"] and again["job"] is None
    assert [v["id"] for v in client.get("/api/videos").json()] == [registered["video"]["id"]]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("../outside/secret.mp4", 403, "'..'"),
        ("sub/../short.mp4", 403, "'..'"),
        ("/etc/passwd", 403, "absolute"),
        ("C:\\videos\\a.mp4", 403, "absolute"),
        ("link.mp4", 403, "symbolic links"),
        ("linkdir/secret.mp4", 403, "symbolic links"),
        ("notes.txt", 403, "video suffix"),
        ("sub", 403, "not a regular file"),
        ("missing.mp4", 404, "no such file"),
        ("", 403, "non-empty path"),
    ],
)
def test_paths_outside_the_roots_are_refused(
    client: TestClient, video_root: Path, path: str, status: int, message: str
) -> None:
    response = client.post("/api/videos", json={"path": path})
    assert response.status_code == status and message in response.json()["detail"]
    assert str(video_root) not in response.text and "Traceback" not in response.text
    assert client.get("/api/videos").json() == []


def test_a_playlist_never_reaches_ffmpeg(client: TestClient) -> None:
    response = client.post("/api/videos", json={"path": "playlist.mp4"})
    assert response.status_code == 415 and "not a video container" in response.json()["detail"]


def test_unknown_root_and_fields(client: TestClient) -> None:
    response = client.post("/api/videos", json={"path": "short.mp4", "root": "elsewhere"})
    assert response.status_code == 403 and "unknown root 'elsewhere'" in response.json()["detail"]
    assert client.post("/api/videos", json={"path": "short.mp4", "url": "http://x"}).status_code == 422


def test_upload_checks_size_and_content(service: VideoService, client: TestClient, video_root: Path) -> None:
    data = (video_root / "short.mp4").read_bytes()
    response = client.post("/api/videos/upload?filename=../../clip.mp4", content=data)
    assert response.status_code == 202, response.text
    video = response.json()["video"]
    assert video["name"] == "upload/clip.mp4" and video["source"] == "upload"
    assert wait_for_job(client, response.json()["job"]["id"])["state"] == "done"
    stored = list(service.uploads.iterdir())
    assert [p.name for p in stored] == [f"{video['id']}.mp4"] and stored[0].read_bytes() == data

    # The same bytes again: the same video.
    assert client.post("/api/videos/upload?filename=again.mp4", content=data).json()["video"]["id"] == video["id"]
    for name, body, status, message in [
        ("notes.mp4", b"these are not video bytes", 415, "not a video container"),
        ("notes.txt", data, 415, "upload a video file"),
        ("empty.mp4", b"", 415, "the upload is empty"),
        ("list.mp4", b"#EXTM3U\nhttp://127.0.0.1:9/a.ts\n", 415, "not a video container"),
        ("cut.mp4", data[: len(data) // 2], 415, "not a readable video"),
    ]:
        response = client.post(f"/api/videos/upload?filename={name}", content=body)
        assert response.status_code == status and message in response.json()["detail"], (name, response.text)
        assert "uploads" not in response.text and ".upload-" not in response.text
    assert len(list(service.uploads.iterdir())) == 1  # no temporary file left behind


def test_upload_over_the_limit_is_refused_while_streaming(
    server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path
) -> None:
    service = make_service(server, encoder, video_root, tmp_path, max_upload_bytes=10_000)
    with TestClient(create_app(service)) as client:
        declared = client.post("/api/videos/upload?filename=a.mp4", content=b"\0" * 10_001)
        assert declared.status_code == 413 and "limit is 10000" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
            for _ in range(20):
                yield b"\0" * 1000

        streamed = client.post("/api/videos/upload?filename=a.mp4", content=chunks())
        assert streamed.status_code == 413 and "larger than the limit" in streamed.json()["detail"]
        assert list(service.uploads.iterdir()) == []


def test_ask_returns_the_json_of_msjoe_ask_with_an_explain_link(
    server: ScriptedServer, client: TestClient, video_root: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    video_id = indexed(client, "short.mp4")
    response = client.post(
        "/api/ask", json={"video_id": video_id, "question": "What colour? [Q-7]", "options": ["red", "green"]}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (
        answer["letter"] == "B"
        and answer["reply"] == "B. Q-7"
        and answer["queries"] == ["a red screen", "a dark square"]
    )
    assert answer["video"] == "videos/short.mp4" and answer["k"] == 4 and len(answer["chosen_timestamps"]) == 4

    # The same fields as `msjoe ask --json` (run here on the same video and scripted MLLM).
    cli = CliRunner().invoke(cli_app, [
        "ask", str(video_root / "short.mp4"), "What colour? [Q-7]", "-o", "red", "-o", "green", "-k", "4", "--json",
        "--mllm", server.url, "--model", "m", "--clip", str(tiny_clip_dir), "--cache-dir", str(tmp_path / "c"),
    ])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    cli_answer = json.loads(cli.stdout)
    assert set(cli_answer) <= set(answer) and set(answer) - set(cli_answer) == {
        "id",
        "video_id",
        "created",
        "explain_url",
    }
    assert cli_answer["chosen_timestamps"] == answer["chosen_timestamps"] and cli_answer["letter"] == answer["letter"]

    explain = client.get(answer["explain_url"])
    assert explain.status_code == 200 and "default-src 'none'" in explain.headers["content-security-policy"]
    assert all(f'id="chosen-{n}"' in explain.text for n in range(4)) and "a dark square" in explain.text
    assert "videos/short.mp4" in explain.text and str(video_root) not in explain.text
    assert explain.text.count("data:image/jpeg;base64,") == 4 + 2  # key frames and previews
    assert client.get(f"/api/answers/{answer['id']}").json() == answer
    listed = client.get("/api/answers").json()
    assert [a["id"] for a in listed] == [answer["id"]] and "similarity" not in listed[0]


def test_bad_questions_get_clear_4xx(service: VideoService, client: TestClient) -> None:
    video_id = indexed(client, "short.mp4")
    cases = [
        ({"video_id": "nope", "question": "q"}, 404, "no video 'nope'"),
        ({"video_id": video_id, "question": "q", "sampler": "bolt2"}, 422, "unknown sampler 'bolt2'"),
        ({"video_id": video_id, "question": "q", "sampler": "usampler"}, 422, "no U-Sampler weights"),
        ({"video_id": video_id, "question": "   "}, 422, "the question is empty"),
        ({"video_id": video_id, "question": "q", "options": ["a", " "]}, 422, "non-empty options"),
        ({"video_id": video_id, "question": "q", "k": 0}, 422, "greater than or equal to 1"),
        ({"video_id": video_id, "question": "q", "options": [str(i) for i in range(11)]}, 422, "at most 10"),
        ({"video_id": video_id, "question": "q", "path": "/etc/passwd"}, 422, "Extra inputs"),
    ]
    for body, status, message in cases:
        response = client.post("/api/ask", json=body)
        assert response.status_code == status and message in response.text, (body, response.text)
        assert "Traceback" not in response.text
    assert (
        client.post("/api/ask", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    )
    assert client.get("/api/answers/../../etc/passwd").status_code == 404
    assert client.get("/api/answers/" + "0" * 32).status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404


def test_a_question_about_a_video_being_indexed_is_a_409(service: VideoService, client: TestClient) -> None:
    with service.qa.encoder._lock:  # hold the encoder: indexing cannot finish
        registered = register(client, "short.mp4")
        response = client.post("/api/ask", json={"video_id": registered["video"]["id"], "question": "q"})
        assert response.status_code == 409 and "cannot be asked about yet" in response.json()["detail"]
    assert wait_for_job(client, registered["job"]["id"])["state"] == "done"


def test_the_indexing_queue_is_bounded(
    server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path
) -> None:
    service = make_service(server, encoder, video_root, tmp_path, queue_size=1)
    with TestClient(create_app(service)) as client:
        with service.qa.encoder._lock:
            first = register(client, "short.mp4")  # taken by the worker, which waits for the encoder
            wait_until(lambda: client.get(f"/api/jobs/{first['job']['id']}").json()["state"] == "running")
            second = register(client, "sub/long.mp4")  # waits in the queue (capacity 1)
            other = tmp_path / "other.mp4"
            write_video(other, duration=2.0, fps=4.0, size=(96, 64))
            refused = client.post("/api/videos/upload?filename=other.mp4", content=other.read_bytes())
            assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
            assert "queue is full" in refused.json()["detail"] and len(list(service.uploads.iterdir())) == 0
            assert client.get("/health").json()["queue"] == {"pending": 1, "capacity": 1}
        for registered in (first, second):
            assert wait_for_job(client, registered["job"]["id"])["state"] == "done"
        assert client.post("/api/videos/upload?filename=other.mp4", content=other.read_bytes()).status_code == 202


def test_bearer_token(server: ScriptedServer, encoder: DualEncoder, video_root: Path, tmp_path: Path) -> None:
    service = make_service(server, encoder, video_root, tmp_path)
    with TestClient(create_app(service, token="s3cret")) as client:
        missing = client.get("/api/videos")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/videos", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/api/videos", json={"path": "short.mp4"}).status_code == 401
        assert client.get("/api/videos", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").json()["auth"] is True and client.get("/").status_code == 200


def test_unexpected_errors_are_a_500_without_a_traceback(
    service: VideoService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(limit: int) -> list:
        raise RuntimeError("secret internal state /very/private/path")

    monkeypatch.setattr(service.answers, "summaries", broken)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        response = client.get("/api/answers")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; the server's log has the details"}


def test_several_roots_are_named_apart_and_must_be_named(video_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "videos"
    other.mkdir()
    roots = VideoRoots([video_root, other])
    assert [root.name for root in roots.roots] == ["videos", "videos-2"]
    with pytest.raises(PathRefused, match="name the root: one of videos, videos-2"):
        roots.resolve("short.mp4")
    assert roots.resolve("short.mp4", "videos") == (roots.roots[0], video_root / "short.mp4")
    assert roots.redact(f"cannot read {video_root}/short.mp4") == "cannot read <videos>/short.mp4"
    with pytest.raises(ValueError, match="is not a folder"):
        VideoRoots([tmp_path / "missing"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_upload_bytes": 0}, "max_upload_bytes must be an int >= 1, got 0"),
        ({"queue_size": 1.5}, "queue_size must be an int >= 1, got 1.5"),
        ({"max_answers_listed": -1}, "max_answers_listed must be an int >= 1, got -1"),
    ],
)
def test_serve_config_names_the_field_the_rule_and_the_value(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServeConfig(**settings)
