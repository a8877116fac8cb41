"""Loading an uncached Hugging Face id with no reachable hub fails at once with a clear ModelLoadError."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

from msjoe import hub
from msjoe.errors import ModelLoadError


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections, records them, and never answers (a hung hub)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by close()
                return
            self.connections.append(connection)

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)
        for connection in self.connections:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def refused_url() -> str:
    """An address on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def write_cached_snapshot(
    cache: Path, repo_id: str, files: tuple[str, ...] = ("config.json", "model.safetensors")
) -> None:
    """The hub-cache layout of ``repo_id`` at branch main holding ``files``, as from_pretrained leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name in files:
        (repo / "snapshots" / commit / name).write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_cached_model_needs_no_hub_and_an_uncached_one_is_probed_once(
    silent_server: SilentServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", silent_server.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
    write_cached_snapshot(tmp_path, "org/cached")

    hub.require_hub_model("org/cached")  # returns: no error, and no connection to the hub
    assert silent_server.connections == []

    with pytest.raises(ModelLoadError, match=r"'org/absent' is not in the local Hugging Face cache and the hub"):
        hub.require_hub_model("org/absent")
    assert len(silent_server.connections) == 1  # one probe, no retries

    # A download that stopped after the config: the weights are missing, so the hub is probed (and found silent).
    write_cached_snapshot(tmp_path, "org/config-only", files=("config.json",))
    with pytest.raises(ModelLoadError, match=r"'org/config-only' is not in the local Hugging Face cache"):
        hub.require_hub_model("org/config-only")
    assert len(silent_server.connections) == 2
    write_cached_snapshot(tmp_path, "org/sharded", files=("config.json", "model.safetensors.index.json"))
    hub.require_hub_model("org/sharded")  # sharded weights: their index stands for them
    assert len(silent_server.connections) == 2


class NotFoundHandler(BaseHTTPRequestHandler):
    """A hub that answers every request with 404 (an id it does not know)."""

    def do_HEAD(self) -> None:  # the name http.server dispatches HEAD requests to
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


def test_a_hub_that_answers_lets_the_loader_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP answer, even an error status, means the hub is reachable: the loader reports the rest itself."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.require_hub_model("org/absent")  # no error
    finally:
        server.shutdown()
        server.server_close()


LOAD_SCRIPT = """
import time
from msjoe.errors import ModelLoadError
from msjoe.features import DualEncoder
from msjoe.mllm.transformers_backend import TransformersMLLM

for load in (lambda: DualEncoder.from_pretrained("org/absent-clip"), lambda: TransformersMLLM("org/absent-vl")):
    start = time.monotonic()
    try:
        load()
        print("loaded")
    except ModelLoadError as err:
        print(f"{time.monotonic() - start:.1f}", err)
"""


@pytest.mark.slow
@pytest.mark.parametrize("hub_state", ["silent", "refusing", "offline"])
def test_loaders_fail_fast_without_a_hub(hub_state: str, silent_server: SilentServer, tmp_path: Path) -> None:
    """Both model loaders (dual encoder, chat model) stop within seconds, not after a minute of retries."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"}
    env.pop("TRANSFORMERS_OFFLINE", None)
    if hub_state == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = silent_server.url if hub_state == "silent" else refused_url()
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert len(lines) == 2, result.stdout
    for line, repo_id in zip(lines, ["org/absent-clip", "org/absent-vl"], strict=True):
        seconds, message = line.split(" ", 1)
        assert float(seconds) < 20  # a generous bound: without the probe this took about a minute
        assert f"model {repo_id!r} is not in the local Hugging Face cache" in message
        assert "`msjoe smoke-models`" in message
        if hub_state == "offline":
            assert "HF_HUB_OFFLINE is set" in message
        else:
            assert f"the hub {env['HF_ENDPOINT']} is unreachable" in message
    assert "Retrying" not in result.stderr  # huggingface_hub's retry loop never started
