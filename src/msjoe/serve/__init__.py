"""The msjoe web service: an HTTP API (FastAPI) and a web page over :class:`~msjoe.pipeline.VideoQA`.

    msjoe serve --mllm smoke-models/qwen2_5_vl --clip smoke-models/clip --video-root smoke-models

From Python::

    from msjoe.serve import ServeConfig, VideoService, create_app
    service = VideoService(VideoQA.from_pretrained(...), ServeConfig(video_roots=["videos"]))
    app = create_app(service, token=None)          # run with uvicorn, or test with fastapi.testclient

Modules: :mod:`~msjoe.serve.app` (HTTP), :mod:`~msjoe.serve.service` (what the endpoints do),
:mod:`~msjoe.serve.jobs` (background indexing), :mod:`~msjoe.serve.models` (one model, one thread at a time),
:mod:`~msjoe.serve.paths` (allowed roots), :mod:`~msjoe.serve.store` (registry and answers on disk),
``static/`` (the page). FastAPI and uvicorn come with the ``serve`` extra: ``pip install 'msjoe[serve]'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "VideoService", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `msjoe --help` imports msjoe.serve.cli, which must not pay for FastAPI and the model stack.
    if name == "create_app":
        from msjoe.serve.app import create_app

        return create_app
    if name in ("ServeConfig", "VideoService"):
        from msjoe.serve import service

        return getattr(service, name)
    raise AttributeError(f"module 'msjoe.serve' has no attribute {name!r}")
