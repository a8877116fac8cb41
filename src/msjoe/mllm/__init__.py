"""Multimodal LLM backends behind one interface (:class:`MLLM`), chosen by name or by a model spec.

>>> mllm = load_mllm("Qwen/Qwen2.5-VL-7B-Instruct", device="cuda", dtype="bfloat16")       # in-process
>>> mllm = load_mllm("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct")     # vLLM / SGLang / ...
>>> mllm.chat([Message("user", [ImagePart(frame), "What happens here?"])])

Built-in backends are imported on first use, so ``import msjoe.mllm`` does not pull in torch/transformers.
Third-party backends register with ``@register_backend("name")`` on an :class:`MLLM` subclass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msjoe.mllm.base import MLLM, GenerationConfig, ImagePart, Message, OptionScores
from msjoe.mllm.errors import UnknownBackendError
from msjoe.registry import Registry

__all__ = [
    "DEFAULT_HTTP_MAX_RETRIES",
    "DEFAULT_HTTP_TIMEOUT",
    "MLLM",
    "GenerationConfig",
    "ImagePart",
    "Message",
    "OptionScores",
    "available_backends",
    "get_backend",
    "http_options",
    "is_http_spec",
    "load_mllm",
    "register_backend",
]

# The HTTP backend's defaults live here, not in msjoe.mllm.http_backend, so that the command line can show them in
# --help without importing httpx (about 50 ms of every `msjoe --help`).
DEFAULT_HTTP_TIMEOUT = 120.0
"""Seconds to wait for an OpenAI-compatible server, per attempt."""
DEFAULT_HTTP_MAX_RETRIES = 3
"""Retries after a timeout, dropped connection, 408, 429 or 5xx."""

# Built-in backends register when their module is imported (lazily: torch and transformers load only when needed).
_REGISTRY: Registry[type[MLLM]] = Registry(
    "MLLM backend",
    unknown_error=UnknownBackendError,
    lazy={"transformers": "msjoe.mllm.transformers_backend", "openai": "msjoe.mllm.http_backend"},
)


def register_backend(name: str) -> Callable[[type[MLLM]], type[MLLM]]:
    """Class decorator registering an :class:`MLLM` subclass under ``name`` for :func:`get_backend`."""

    def decorate(cls: type[MLLM]) -> type[MLLM]:
        return _REGISTRY.add(name, cls)

    return decorate


def available_backends() -> list[str]:
    """Names :func:`get_backend` accepts."""
    return _REGISTRY.names()


def get_backend(name: str, **options: Any) -> MLLM:
    """Instantiate the backend registered as ``name`` with ``options`` (its constructor's keyword arguments)."""
    return _REGISTRY.get(name)(**options)


def is_http_spec(spec: str) -> bool:
    """Whether a model spec is the URL of an OpenAI-compatible server (else a Hugging Face id or local folder)."""
    return spec.startswith(("http://", "https://"))


def http_options(spec: str, label: Callable[[str], str] = str, **options: Any) -> dict[str, Any]:
    """The HTTP backend's ``options`` that are set (not None), for ``load_mllm(spec, **...)``.

    Raises ``ValueError`` naming them (each through ``label``, e.g. as a command-line flag) when ``spec`` is a
    local model, which would not use them."""
    given = {name: value for name, value in options.items() if value is not None}
    if given and not is_http_spec(spec):
        names = ", ".join(label(name) for name in given)
        raise ValueError(f"{names}: options of an HTTP server, for an http(s) URL ({spec!r} is a local model)")
    return given


def load_mllm(spec: str, **options: Any) -> MLLM:
    """Open a model from a spec: an ``http(s)://`` URL of an OpenAI-compatible server (backend ``"openai"``;
    pass ``model=``), else a Hugging Face id or local folder (backend ``"transformers"``)."""
    if is_http_spec(spec):
        return get_backend("openai", base_url=spec, **options)
    return get_backend("transformers", model=spec, **options)
