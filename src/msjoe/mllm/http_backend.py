"""A client for OpenAI-compatible chat-completions servers (vLLM, SGLang, TGI, llama.cpp, hosted APIs).

Frames travel inline as base64 data URLs (``{"type": "image_url", "image_url": {"url": "data:image/jpeg;..."}}``),
resized on the client to ``ImagePart.max_pixels`` so that neither bandwidth nor the server's visual token count
exceed what the caller asked for.

Failures are split into transient ones, retried with exponential backoff and jitter (connection errors, timeouts,
dropped connections, 408, 429 and every 5xx; a server's ``retry-after-ms`` or ``Retry-After`` is honoured), and
permanent ones raised at once (other 4xx, malformed bodies). See :mod:`msjoe.mllm.errors`. The worst case before
an error is ``(max_retries + 1) * timeout`` plus the backoff delays: lower both (``--timeout``, ``--max-retries``)
to give up sooner on a server that accepts connections but never answers.

Concurrency uses threads rather than asyncio: the rest of msjoe is synchronous, threads work from notebooks that
already run an event loop, and the work is network wait (released GIL). One semaphore per client bounds the
requests in flight across :meth:`HTTPMLLM.chat_many` and any threads calling :meth:`HTTPMLLM.chat` directly.
"""

from __future__ import annotations

import base64
import email.utils
import io
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import httpx
from PIL import Image

from msjoe.mllm import DEFAULT_HTTP_MAX_RETRIES, DEFAULT_HTTP_TIMEOUT, register_backend
from msjoe.mllm.base import MLLM, GenerationConfig, ImagePart, Message, OptionScores
from msjoe.mllm.errors import (
    BackendCheckError,
    BackendConnectionError,
    BackendError,
    BackendHTTPError,
    BackendTimeoutError,
    MalformedReplyError,
)

T = TypeVar("T")
RETRYABLE_4XX = frozenset({408, 429})  # request timeout, rate limit: the same request can succeed later
API_KEY_VARIABLES = ("MSJOE_API_KEY", "OPENAI_API_KEY")
"""Where the API key is read from by default, first set wins (``api_key_env`` names another variable)."""
DEFAULT_TIMEOUT = DEFAULT_HTTP_TIMEOUT
DEFAULT_MAX_RETRIES = DEFAULT_HTTP_MAX_RETRIES
TOP_LOGPROBS = 20
"""Alternatives asked for by :meth:`HTTPMLLM.option_probabilities` (OpenAI's maximum and vLLM's default cap)."""


def is_retryable_status(status: int) -> bool:
    """Whether a reply with HTTP ``status`` is worth sending again: 408, 429 and every 5xx (the server's fault)."""
    return status in RETRYABLE_4XX or 500 <= status <= 599


def encode_image(part: ImagePart, image_format: Literal["jpeg", "png"] = "jpeg", multiple: int = 1) -> str:
    """``part`` as a ``data:`` URL, resized to its ``max_pixels`` (sides snapped to ``multiple``)."""
    buffer = io.BytesIO()
    image = Image.fromarray(part.resized(multiple))
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG")
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _server_message(response: httpx.Response) -> str:
    """The error text of a failed response: OpenAI ``{"error": {"message"}}``, vLLM ``{"message"}``,
    FastAPI ``{"detail"}``, else the start of the raw body."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500].strip() or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if payload.get(key):
                return str(payload[key])
    return str(payload)[:500]


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a server asks for, in seconds, or ``None``: ``retry-after-ms`` (milliseconds, sent by OpenAI's API)
    when it is a number, else ``Retry-After`` (delta-seconds or an HTTP date)."""
    milliseconds = response.headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _model_names(listing: Any) -> list[str]:
    """The ids in a ``GET /models`` reply (``{"data": [{"id": ...}, ...]}``)."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    return [str(entry["id"]) for entry in entries or [] if isinstance(entry, dict) and entry.get("id") is not None]


def _api_key_from_environment(variable: str | None) -> str | None:
    """The key in ``$variable`` (which must be set), else in the first set of :data:`API_KEY_VARIABLES`."""
    if variable is not None:
        key = os.environ.get(variable, "").strip()
        if not key:
            raise ValueError(f"api_key_env names ${variable}, but that environment variable is unset or empty")
        return key
    return next((os.environ[name].strip() for name in API_KEY_VARIABLES if os.environ.get(name, "").strip()), None)


@register_backend("openai")
class HTTPMLLM(MLLM):
    """Chat with a model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"`` (a full ``.../chat/completions`` URL works too).
        model: the served model name; ``None`` asks ``GET /models`` and uses the only model served.
        api_key: sent as a bearer token; defaults to the variable ``api_key_env`` names, else ``$MSJOE_API_KEY``,
            then ``$OPENAI_API_KEY``, else none.
        api_key_env: the name of the environment variable holding the key (e.g. ``"TOGETHER_API_KEY"``); an
            error when it is unset or empty. Keys stay out of command lines and logs this way.
        timeout: seconds allowed to connect and between bytes of the reply, per attempt.
        max_retries: extra attempts after a transient failure (0 = try once).
        backoff: first retry delay in seconds; doubles each retry, with jitter (50-100 % of the nominal delay).
        max_backoff: cap on any single delay, including a server's ``Retry-After``.
        max_concurrency: requests in flight at most (for :meth:`chat_many` and across threads).
        image_format: ``"jpeg"`` (small; default) or ``"png"`` (lossless).
        image_multiple: resized frames get sides that are multiples of this. 28 suits Qwen2/2.5-VL servers, which
            otherwise round sides to 28 themselves, possibly above the budget; 1 disables snapping.
        extra_body: extra request fields for server-specific options (e.g. vLLM's ``{"top_k": -1}``).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_concurrency: int = 8,
        image_format: Literal["jpeg", "png"] = "jpeg",
        image_multiple: int = 28,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0 or max_concurrency < 1:
            raise ValueError(
                f"need timeout > 0, max_concurrency >= 1 and non-negative retries/backoff; got {timeout=}, "
                f"{max_concurrency=}, {max_retries=}, {backoff=}, {max_backoff=}"
            )
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/chat/completions")
        self._model = model
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.max_concurrency = max_concurrency
        self.image_format, self.image_multiple = image_format, image_multiple
        self.extra_body = dict(extra_body or {})
        api_key = api_key or _api_key_from_environment(api_key_env)
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._in_flight = threading.BoundedSemaphore(max_concurrency)
        self._model_lock = threading.Lock()
        self._jitter = random.Random()

    # --- public API -----------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The served model name (asked from the server on first use if not given)."""
        with self._model_lock:
            if self._model is None:
                names = _model_names(self._request("GET", "/models"))
                if len(names) != 1:
                    raise BackendError(
                        f"{self.base_url} serves {names or 'no models'}; pass model= (--model on the command line)"
                    )
                self._model = names[0]
            return self._model

    def request_body(self, messages: list[Message], generation: GenerationConfig | None = None) -> dict[str, Any]:
        """The JSON body sent for ``messages`` (useful to inspect or log a request)."""
        generation = generation or GenerationConfig()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [self._convert(message) for message in messages],
            "max_tokens": generation.max_new_tokens,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
        }
        if generation.seed is not None:
            body["seed"] = generation.seed
        return body | self.extra_body

    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        reply = self._request("POST", "/chat/completions", self.request_body(messages, generation))
        return self._reply_text(reply)

    def option_probabilities(self, messages: list[Message], letters: Sequence[str]) -> OptionScores:
        """The first reply token's distribution over ``letters``, from the server's ``top_logprobs``.

        One request for one greedy token with ``logprobs: true, top_logprobs: 20`` (vLLM, SGLang and OpenAI serve
        them). A letter counts with every listed token that reads as it once stripped (``"B"``, ``" B"``); a letter
        outside the 20 listed alternatives counts as 0. With no letter listed at all the result is uniform with
        ``letter_mass`` 0.
        """
        if not letters or len(set(letters)) != len(letters):
            raise ValueError(f"letters must be distinct and non-empty, got {list(letters)!r}")
        body = self.request_body(messages, GenerationConfig(max_new_tokens=1, temperature=0.0))
        reply = self._request("POST", "/chat/completions", body | {"logprobs": True, "top_logprobs": TOP_LOGPROBS})
        raw = dict.fromkeys(letters, 0.0)
        for token, logprob in self._first_token_alternatives(reply):
            if token.strip() in raw:
                raw[token.strip()] += math.exp(logprob)
        mass = sum(raw.values())
        if mass <= 0:
            return OptionScores(dict.fromkeys(letters, 1.0 / len(letters)), 0.0)
        return OptionScores({letter: value / mass for letter, value in raw.items()}, min(1.0, mass))

    def chat_many(self, chats: Sequence[list[Message]], generation: GenerationConfig | None = None) -> list[str]:
        """Replies in input order, with up to ``max_concurrency`` requests in flight. The first failure (in
        input order) is raised after cancelling the requests not yet started."""
        return self._concurrently(lambda messages: self.chat(messages, generation), chats)

    def option_probabilities_many(
        self, chats: Sequence[list[Message]], letters: Sequence[Sequence[str]]
    ) -> list[OptionScores]:
        """:meth:`option_probabilities` of several chats, with up to ``max_concurrency`` requests in flight."""
        if len(chats) != len(letters):
            raise ValueError(f"one letter list per chat is needed, got {len(letters)} for {len(chats)} chats")
        return self._concurrently(lambda pair: self.option_probabilities(*pair), list(zip(chats, letters, strict=True)))

    def check(self) -> None:
        """Send one chat with a one-token reply: a wrong URL, model name or key fails here, before a run, with the
        server's own message (and the models it lists, when the name is not among them).

        Only the status is checked, not the reply's text (one token of a reasoning model may carry none)."""
        model = self.model
        body = {"model": model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1, "temperature": 0}
        try:
            self._request("POST", "/chat/completions", body | self.extra_body)
        except BackendError as error:
            listed = self._listed_models() if isinstance(error, BackendHTTPError) else []
            hint = f" (the server lists {listed})" if listed and model not in listed else ""
            raise BackendCheckError(
                f"{self.base_url} cannot answer a chat with model {model!r}: {error}{hint}"
            ) from error

    def close(self) -> None:
        self._client.close()

    # --- internals ------------------------------------------------------------------------------------------
    def _concurrently(self, call: Callable[[Any], T], inputs: Sequence[Any]) -> list[T]:
        """``call`` on each input on up to ``max_concurrency`` threads, results in input order; the first failure
        (in input order) is raised after cancelling the calls not yet started."""
        if len(inputs) <= 1:
            return [call(value) for value in inputs]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(inputs))) as pool:
            futures = [pool.submit(call, value) for value in inputs]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _listed_models(self) -> list[str]:
        """The model names ``GET /models`` lists, or none when the server does not answer it."""
        try:
            return _model_names(self._client.get(self.base_url + "/models").json())
        except (httpx.HTTPError, ValueError):
            return []

    def _convert(self, message: Message) -> dict[str, Any]:
        if all(isinstance(part, str) for part in message.content):
            return {"role": message.role, "content": "".join(message.content)}  # plain string: widest support
        parts = []
        for part in message.content:
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif isinstance(part, ImagePart):
                url = encode_image(part, self.image_format, self.image_multiple)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                raise TypeError(f"message parts must be str or ImagePart, got {type(part).__name__}")
        return {"role": message.role, "content": parts}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send with retries; return the decoded JSON of a 2xx reply."""
        url = self.base_url + path
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = None
            tried = f"{attempt} attempt{'s' if attempt > 1 else ''}"
            try:
                with self._in_flight:
                    response = self._client.request(method, url, json=body)
            except httpx.TimeoutException as error:
                failure: BackendError = BackendTimeoutError(f"{method} {url} timed out after {tried}: {error!r}")
            except httpx.TransportError as error:  # refused, reset, dropped mid-reply, ...
                failure = BackendConnectionError(f"{method} {url} failed after {tried}: {error!r}")
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise MalformedReplyError(
                            f"{url} answered {response.status_code} with a body that is not JSON: "
                            f"{response.text[:200]!r}"
                        ) from None
                message = _server_message(response)
                status = response.status_code
                if not is_retryable_status(status):
                    hint = (
                        " (is the base URL right? OpenAI-compatible servers usually end in /v1)"
                        if status == 404
                        else ""
                    )
                    raise BackendHTTPError(f"{method} {url} answered {status}: {message}{hint}", status, message)
                failure = BackendHTTPError(
                    f"{method} {url} answered {status} after {tried}: {message}", status, message
                )
                retry_after = _retry_after_seconds(response)
            if attempt < attempts:
                time.sleep(self._delay(attempt, retry_after))
        raise failure

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt``: the server's ``Retry-After`` if it sent one, else
        exponential backoff with jitter so that many clients do not retry in lockstep."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        nominal = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return nominal * self._jitter.uniform(0.5, 1.0)

    def _first_token_alternatives(self, reply: Any) -> list[tuple[str, float]]:
        """``(token, logprob)`` of the first generated token's listed alternatives (OpenAI's ``logprobs`` layout)."""
        where = f"{self.base_url}/chat/completions"
        try:
            first = reply["choices"][0]["logprobs"]["content"][0]
            alternatives = [(str(a["token"]), float(a["logprob"])) for a in first["top_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise MalformedReplyError(
                f"{where} replied without the first token's top_logprobs (does the server support "
                f"'logprobs: true, top_logprobs: {TOP_LOGPROBS}'?): {str(reply)[:200]}"
            ) from None
        if not alternatives:  # some servers list only the chosen token
            alternatives = [(str(first["token"]), float(first["logprob"]))]
        return alternatives

    def _reply_text(self, reply: Any) -> str:
        where = f"{self.base_url}/chat/completions"
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise MalformedReplyError(f"{where} replied without 'choices': {str(reply)[:200]}")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise MalformedReplyError(f"{where} replied without message content: {str(choices[0])[:200]}")
        return content
