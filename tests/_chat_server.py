"""A real chat-completions server on 127.0.0.1 with scripted behaviours, shared by the HTTP backend and pipeline
tests.

conftest.py exposes the `server` fixture to every test module.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Behaviour = Callable[["Handler", dict[str, Any]], None]


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


def last_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"][-1]


# --- scripted behaviours: each handles one request ------------------------------------------------------------
def echo(handler: Handler, body: dict[str, Any]) -> None:
    handler.send_json(200, completion(f"echo: {last_text(body)}"))


def status(code: int, payload: Any, headers: dict[str, str] | None = None) -> Behaviour:
    return lambda handler, body: handler.send_json(code, payload, headers)


def raw(text: str) -> Behaviour:
    return lambda handler, body: handler.send_raw(200, text.encode())


def slow(seconds: float) -> Behaviour:
    def behave(handler: Handler, body: dict[str, Any]) -> None:
        time.sleep(seconds)
        echo(handler, body)

    return behave


def slow_in_pairs(seconds: float, max_wait: float = 0.8) -> Behaviour:
    """Like :func:`slow`, but each request first waits (up to ``max_wait``) for a second one to be in flight, so
    a client allowed two concurrent requests shows two even on a loaded machine where threads start late."""

    def behave(handler: Handler, body: dict[str, Any]) -> None:
        server = handler.server
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            with server.lock:
                if server.in_flight >= 2:
                    break
            time.sleep(0.005)
        time.sleep(seconds)
        echo(handler, body)

    return behave


def drop_mid_reply(handler: Handler, body: dict[str, Any]) -> None:
    """Promise 1000 bytes, send 10, close the connection."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"choices"')
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


class Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    in_flight = False

    def leave_flight(self) -> None:
        """Stop counting this request as in flight: called before its reply goes out, since the client may send its
        next request as soon as it has read the reply, before this handler thread gets to run again."""
        with self.server.lock:
            if self.in_flight:
                self.server.in_flight -= 1
                self.in_flight = False

    def send_raw(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.leave_flight()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_raw(code, json.dumps(payload).encode(), headers)

    def do_GET(self) -> None:
        self.send_json(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        if body.get("max_tokens") == 1 and not body.get("logprobs"):  # HTTPMLLM.check: scripted and recorded apart
            with server.lock:
                server.checks.append(body)
            server.check(self, body)
            return
        with server.lock:
            server.requests.append((time.monotonic(), self.path, dict(self.headers), body))
            behaviour = server.script.popleft() if server.script else server.default
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            self.in_flight = True
        try:
            behaviour(self, body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass
        finally:
            self.leave_flight()


class ScriptedServer(ThreadingHTTPServer):
    """Answers POSTs with ``script`` behaviours in arrival order, then with ``default``; records every request.

    The one-token request ``HTTPMLLM.check`` sends before a run is answered by ``check`` instead (default: echo)
    and recorded in ``checks``, so the scripts and ``requests`` are about the items alone."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.script: deque[Behaviour] = deque()
        self.default: Behaviour = echo
        self.check: Behaviour = echo
        self.checks: list[dict[str, Any]] = []
        self.requests: list[tuple[float, str, dict[str, str], dict[str, Any]]] = []
        self.in_flight = self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
