"""The OpenAI-compatible HTTP backend against a real scripted HTTP server on 127.0.0.1, and the backend registry."""

from __future__ import annotations

import base64
import io
import math
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from _chat_server import (
    Behaviour,
    ScriptedServer,
    completion,
    drop_mid_reply,
    echo,
    raw,
    slow,
    slow_in_pairs,
    status,
)
from msjoe.mllm import MLLM, GenerationConfig, ImagePart, Message, available_backends, get_backend, load_mllm
from msjoe.mllm import register_backend as register
from msjoe.mllm.errors import (
    BackendConnectionError,
    BackendHTTPError,
    BackendTimeoutError,
    MalformedReplyError,
    UnknownBackendError,
)
from msjoe.mllm.http_backend import HTTPMLLM, _retry_after_seconds


def client(server: ScriptedServer, **options: Any) -> HTTPMLLM:
    options = {"model": "m", "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **options}
    mllm = load_mllm(server.url, **options)
    assert isinstance(mllm, HTTPMLLM)
    return mllm


def image(height: int, width: int, max_pixels: int | None = None, seed: int = 0) -> ImagePart:
    smooth = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)  # JPEG-friendly content
    noise = np.random.default_rng(seed).integers(0, 8, (height, width, 3))
    return ImagePart((smooth + noise).clip(0, 255).astype(np.uint8), max_pixels=max_pixels)


def decode_data_url(url: str) -> Image.Image:
    header, data = url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data, validate=True)))


# --- normal replies and the request body -----------------------------------------------------------------------
def test_normal_reply_and_request_body(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSJOE_API_KEY", "secret-key")
    full, budgeted = image(224, 336), image(224, 336, max_pixels=28 * 28 * 16)
    messages = [
        Message("system", ["Be brief."]),
        Message("user", ["first", full, "second", budgeted, "question?"]),
    ]
    config = GenerationConfig(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3)
    with client(server) as mllm:
        assert mllm.chat(messages, config) == "echo: question?"

    (_, path, headers, body), *_ = server.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer secret-key"
    assert body["model"] == "m"
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (7, 0.5, 0.9, 3)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert [p["text"] for p in parts if p["type"] == "text"] == ["first", "second", "question?"]
    sent_full, sent_budgeted = (decode_data_url(p["image_url"]["url"]) for p in parts if p["type"] == "image_url")
    assert sent_full.format == "JPEG" and sent_full.size == (336, 224)  # PIL sizes are (width, height)
    assert sent_budgeted.size == (140, 84)  # 28*28*16 pixels: 3 x 5 patches of 28 (hand-computed)
    assert np.abs(np.asarray(sent_full, dtype=float) - full.pixels).mean() < 4  # same picture, JPEG loss only


def test_api_key_from_the_variable_api_key_env_names(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSJOE_API_KEY", "default-key")
    monkeypatch.setenv("MY_PROVIDER_KEY", "provider-key")
    client(server, api_key_env="MY_PROVIDER_KEY").chat([Message("user", ["hi"])])
    assert server.requests[-1][2]["Authorization"] == "Bearer provider-key"
    monkeypatch.delenv("MY_PROVIDER_KEY")
    with pytest.raises(ValueError, match=r"\$MY_PROVIDER_KEY.*unset or empty"):
        client(server, api_key_env="MY_PROVIDER_KEY")


def test_openai_api_key_is_the_fallback(server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSJOE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    client(server).chat([Message("user", ["hi"])])
    assert server.requests[-1][2]["Authorization"] == "Bearer openai-key"
    monkeypatch.delenv("OPENAI_API_KEY")
    client(server).chat([Message("user", ["hi"])])
    assert "Authorization" not in server.requests[-1][2]


def test_model_name_is_discovered_when_not_given(server: ScriptedServer) -> None:
    mllm = client(server, model=None)
    assert mllm.chat([Message("user", ["hi"])]) == "echo: hi"
    assert server.requests[0][3]["model"] == "served-model"


def test_extra_body_fields_are_sent(server: ScriptedServer) -> None:
    client(server, extra_body={"top_k": -1}).chat([Message("user", ["hi"])])
    assert server.requests[0][3]["top_k"] == -1


# --- transient failures are retried ----------------------------------------------------------------------------
def test_server_error_then_success_is_retried(server: ScriptedServer) -> None:
    server.script.extend([status(500, {"error": {"message": "boom"}}), status(503, {})])
    assert client(server).chat([Message("user", ["hi"])]) == "echo: hi"
    assert len(server.requests) == 3


@pytest.mark.parametrize("code", [501, 505, 507, 520, 599])
def test_every_5xx_is_retried(server: ScriptedServer, code: int) -> None:
    server.script.append(status(code, {"error": {"message": "server trouble"}}))
    assert client(server).chat([Message("user", ["hi"])]) == "echo: hi"
    assert len(server.requests) == 2


def test_persistent_server_error_gives_up_after_the_retries(server: ScriptedServer) -> None:
    server.default = status(502, {"error": {"message": "bad gateway"}})
    with pytest.raises(BackendHTTPError, match="bad gateway") as caught:
        client(server, max_retries=2).chat([Message("user", ["hi"])])
    assert caught.value.status_code == 502 and "3 attempts" in str(caught.value)
    assert len(server.requests) == 3


def test_rate_limit_honours_retry_after(server: ScriptedServer) -> None:
    server.script.append(status(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.4"}))
    assert client(server, backoff=0.001).chat([Message("user", ["hi"])]) == "echo: hi"
    (first, *_), (second, *_) = server.requests
    assert second - first >= 0.4  # waited as told, not the 1 ms backoff


def test_retry_after_ms_is_honoured_on_a_5xx(server: ScriptedServer) -> None:
    server.script.append(status(503, {"error": {"message": "busy"}}, {"retry-after-ms": "400", "Retry-After": "9"}))
    assert client(server, backoff=0.001).chat([Message("user", ["hi"])]) == "echo: hi"
    (first, *_), (second, *_) = server.requests
    assert 0.4 <= second - first < 5  # the milliseconds header, not the 1 ms backoff nor the 9 s of Retry-After


def test_retry_after_parsing() -> None:
    import httpx

    assert _retry_after_seconds(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    assert _retry_after_seconds(httpx.Response(429, headers={"retry-after-ms": "250", "Retry-After": "3"})) == 0.25
    assert _retry_after_seconds(httpx.Response(429, headers={"retry-after-ms": "x", "Retry-After": "3"})) == 3.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < _retry_after_seconds(httpx.Response(429, headers={"Retry-After": date})) <= 30
    assert _retry_after_seconds(httpx.Response(429)) is None
    assert _retry_after_seconds(httpx.Response(429, headers={"Retry-After": "soon"})) is None


def test_slow_reply_times_out_on_every_attempt(server: ScriptedServer) -> None:
    server.default = slow(2.0)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match="timed out after 2 attempts"):
        client(server, timeout=0.2, max_retries=1).chat([Message("user", ["hi"])])
    assert time.monotonic() - started < 1.5  # gave up on the client side, did not wait for the server
    assert len(server.requests) == 2


def test_dropped_connection_is_retried(server: ScriptedServer) -> None:
    server.script.append(drop_mid_reply)
    assert client(server).chat([Message("user", ["hi"])]) == "echo: hi"
    assert len(server.requests) == 2


def test_dropped_connection_on_every_attempt_raises_connection_error(server: ScriptedServer) -> None:
    server.default = drop_mid_reply
    with pytest.raises(BackendConnectionError, match="failed after 3 attempts"):
        client(server, max_retries=2).chat([Message("user", ["hi"])])


def test_unreachable_server_raises_connection_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mllm = load_mllm(f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff=0.01)
    with pytest.raises(BackendConnectionError, match=str(port)):
        mllm.chat([Message("user", ["hi"])])


# --- permanent failures are raised at once ---------------------------------------------------------------------
@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_client_errors_raise_immediately_with_the_server_message(server: ScriptedServer, code: int) -> None:
    server.default = status(code, {"object": "error", "message": "prompt is longer than 32768 tokens"})
    with pytest.raises(BackendHTTPError, match="prompt is longer than 32768 tokens") as caught:
        client(server).chat([Message("user", ["hi"])])
    assert caught.value.status_code == code and caught.value.server_message.startswith("prompt is longer")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (raw("<html>not json"), "not JSON"),
        (status(200, {"id": "x", "object": "chat.completion"}), "without 'choices'"),
        (status(200, {"choices": []}), "without 'choices'"),
        (status(200, {"choices": [{"message": {"role": "assistant", "content": None}}]}), "without message content"),
    ],
)
def test_malformed_replies_raise_malformed_reply_error(
    server: ScriptedServer, behaviour: Behaviour, reason: str
) -> None:
    server.default = behaviour
    with pytest.raises(MalformedReplyError, match=reason):
        client(server).chat([Message("user", ["hi"])])
    assert len(server.requests) == 1


# --- concurrency -----------------------------------------------------------------------------------------------
def test_chat_many_keeps_order_and_never_exceeds_max_concurrency(server: ScriptedServer) -> None:
    server.default = slow_in_pairs(0.15)
    chats = [[Message("user", [f"question {i}"])] for i in range(6)]
    replies = client(server, max_concurrency=2).chat_many(chats)
    assert replies == [f"echo: question {i}" for i in range(6)]
    assert server.max_in_flight == 2  # concurrent, and never more than the limit


def test_concurrency_limit_holds_across_threads_and_waiting_is_not_a_timeout(server: ScriptedServer) -> None:
    server.default = slow_in_pairs(0.1)
    # 24 requests, 2 at a time: the last waits ~1.2 s for its turn, longer than the 1 s timeout, which must
    # only apply to the request itself (no retries allowed, so any spurious timeout would fail a thread).
    mllm = client(server, max_concurrency=2, timeout=1.0, max_retries=0)
    outcomes: list[str | Exception] = []

    def ask(i: int) -> None:
        try:
            outcomes.append(mllm.chat([Message("user", [str(i)])]))
        except Exception as error:
            outcomes.append(error)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, outcomes)) == sorted(f"echo: {i}" for i in range(24))
    assert server.max_in_flight == 2


def test_chat_many_raises_the_first_failure(server: ScriptedServer) -> None:
    server.script.extend([echo, status(400, {"error": {"message": "bad request"}})])
    chats = [[Message("user", [f"q{i}"])] for i in range(4)]
    with pytest.raises(BackendHTTPError, match="bad request"):
        client(server, max_concurrency=1).chat_many(chats)


def logprob_reply(alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    reply = completion(alternatives[0][0] if alternatives else "")
    first = {"token": reply["choices"][0]["message"]["content"], "logprob": math.log(0.5),
             "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives]}  # fmt: skip
    reply["choices"][0]["logprobs"] = {"content": [first]}
    return reply


def test_option_probabilities_read_the_first_tokens_top_logprobs(server: ScriptedServer) -> None:
    # "B" and " B" are the same letter; "The" is not a letter; C and D are not listed (probability 0).
    server.script.append(status(200, logprob_reply([("B", 0.5), ("A", 0.2), ("The", 0.15), (" B", 0.1)])))
    scores = client(server).option_probabilities([Message("user", ["Which?", image(32, 32)])], ["A", "B", "C", "D"])
    assert scores.letter_mass == pytest.approx(0.8)
    assert scores.probabilities == pytest.approx({"A": 0.25, "B": 0.75, "C": 0.0, "D": 0.0})
    (_, path, _, body) = server.requests[-1]
    assert path.endswith("/chat/completions") and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["messages"][0]["content"][-1]["type"] == "image_url"


def test_option_probabilities_without_any_letter_or_without_logprobs(server: ScriptedServer) -> None:
    server.script.append(status(200, logprob_reply([("The", 0.6), ("I", 0.3)])))
    scores = client(server).option_probabilities([Message("user", ["Which?"])], ["A", "B"])
    assert scores.letter_mass == 0.0 and scores.probabilities == {"A": 0.5, "B": 0.5}
    server.script.append(status(200, completion("A")))  # a server that ignores logprobs
    with pytest.raises(MalformedReplyError, match="top_logprobs"):
        client(server).option_probabilities([Message("user", ["Which?"])], ["A", "B"])
    with pytest.raises(ValueError, match="distinct"):
        client(server).option_probabilities([Message("user", ["Which?"])], [])


def test_http_backend_does_not_import_torch() -> None:
    code = (
        "import sys; from msjoe.mllm import load_mllm; "
        "load_mllm('http://127.0.0.1:1/v1', model='m'); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- options and registry --------------------------------------------------------------------------------------
def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="base_url"):
        get_backend("openai", base_url="127.0.0.1:8000", model="m")
    with pytest.raises(ValueError, match="max_concurrency"):
        load_mllm("http://127.0.0.1:1/v1", model="m", max_concurrency=0)


def test_registry_resolves_builtin_and_custom_backends() -> None:
    assert {"openai", "transformers"} <= set(available_backends())
    with pytest.raises(UnknownBackendError, match=r"choose one of: .*openai"):
        get_backend("no-such-backend")

    @register("echo-test")
    class EchoMLLM(MLLM):
        name = "echo-test"

        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
            return self.prefix + str(messages[-1].content[-1])

    echo_mllm = get_backend("echo-test", prefix="> ")
    assert "echo-test" in available_backends()
    assert echo_mllm.chat_many([[Message("user", ["a"])], [Message("user", ["b"])]]) == ["> a", "> b"]

    with pytest.raises(ValueError, match="already registered by"):

        @register("echo-test")
        class OtherMLLM(EchoMLLM):
            pass
