"""Shared pieces of the service tests: a video root with traps, a scripted MLLM, a real uvicorn server in a thread."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from _chat_server import Handler, completion
from msjoe.synthetic_video import Event, event_color, write_video

ANSWER_TURN_MARK = "Answer with the option's letter"
QUESTION_TAG = re.compile(r"\[Q-(\d+)\]")


def scripted_replies(handler: Handler, body: dict[str, Any]) -> None:
    """Queries for the query turn; for the answer turn "B", followed by the question's [Q-n] tag when it has one
    (so a test can tell whose reply a response carries)."""
    texts = [
        part if isinstance(part, str) else part.get("text", "")
        for message in body["messages"]
        for part in (message["content"] if isinstance(message["content"], list) else [message["content"]])
    ]
    prompt = "\n".join(texts)
    if ANSWER_TURN_MARK not in prompt:
        handler.send_json(200, completion('<queries>["a red screen", "a dark square"]</queries>'))
        return
    tag = QUESTION_TAG.search(prompt)
    handler.send_json(200, completion("B." + (f" Q-{tag[1]}" if tag else "")))


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/`` with a 6 s and a 9 s video (one in a subfolder), a text file, and symbolic links (to a video
    outside the root, and to a folder outside it) that the service must refuse."""
    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "videos", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    write_video(root / "short.mp4", duration=6.0, fps=4.0, size=(96, 64), events=[Event(2.0, 3.0, event_color(0))])
    write_video(
        root / "sub" / "long.mp4", duration=9.0, fps=4.0, size=(96, 64), events=[Event(5.0, 7.0, event_color(1))]
    )
    write_video(outside / "secret.mp4", duration=3.0, fps=4.0, size=(96, 64))
    (root / "notes.txt").write_text("not a video")
    (root / "playlist.mp4").write_text("#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n")
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RealServer:
    """A real uvicorn server for ``app`` on 127.0.0.1 in a background thread (startup and shutdown included)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RealServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_for_job(client: httpx.Client | Any, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a job until it is done or failed; return its last state."""

    def finished() -> dict[str, Any] | None:
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed") else None

    return wait_until(finished, timeout, f"job {job_id}")
