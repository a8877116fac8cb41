"""``msjoe serve``: load the models once and serve the HTTP API and the web page with uvicorn.

Kept apart from :mod:`msjoe.cli` so that ``msjoe --help`` imports neither FastAPI nor the models.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from msjoe.defaults import DEFAULT_CLIP, DEFAULT_MLLM, DEFAULT_SAMPLER
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES

console = Console(stderr=True)
TOKEN_ENV = "MSJOE_SERVE_TOKEN"


def serve(
    mllm: Annotated[
        str, typer.Option("--mllm", help="MLLM: Hugging Face id, local folder, or an OpenAI-compatible http(s) URL.")
    ] = DEFAULT_MLLM,
    clip: Annotated[str, typer.Option("--clip", help="Frozen CLIP/SigLIP dual encoder.")] = DEFAULT_CLIP,
    video_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--video-root", help="A folder whose videos clients may index by path (repeat).", show_default=False
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; the default accepts local connections only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8000,
    model: Annotated[str | None, typer.Option("--model", help="Model name to request from an HTTP --mllm.")] = None,
    k: Annotated[int, typer.Option("-k", help="Default key frames per question.", min=1)] = 32,
    sampler: Annotated[str, typer.Option(help="Default sampler (see `msjoe samplers`).")] = DEFAULT_SAMPLER,
    sampler_checkpoint: Annotated[
        Path | None, typer.Option(help="U-Sampler weights (enables --sampler usampler).")
    ] = None,
    fps: Annotated[float, typer.Option(help="Candidate frames per second.", min=1e-6)] = DEFAULT_FPS,
    max_frames: Annotated[int, typer.Option(help="Cap on candidates per video.", min=1)] = DEFAULT_MAX_FRAMES,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Feature cache \\[default: $MSJOE_CACHE or ~/.cache/msjoe/features]."),
    ] = None,
    state_dir: Annotated[Path, typer.Option(help="Where registered videos, past answers and uploads are kept.")] = Path(
        "~/.cache/msjoe/serve"
    ),
    store_frames: Annotated[
        bool,
        typer.Option(
            "--store-frames/--no-store-frames", help="Keep candidate frames as JPEGs too, made in the indexing pass."
        ),
    ] = True,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MiB.", min=0.001)] = 2048.0,
    queue_size: Annotated[int, typer.Option(help="Videos that may wait for indexing.", min=1)] = 16,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV, help=f"Require 'Authorization: Bearer TOKEN' on the API (better: set ${TOKEN_ENV})."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, auto.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="MLLM dtype: auto, bfloat16, float16, float32.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn's log level (info shows each request).")] = "info",
) -> None:
    """Serve the HTTP API (OpenAPI schema at /openapi.json) and the web page at / (models load once).

    Clients index videos found under the --video-root folders (by relative path; nothing outside them, no
    symbolic links) or uploaded, then ask questions and get each answer with its explain view.
    """
    from msjoe.cli_support import fail
    from msjoe.errors import MsjoeError

    try:
        import uvicorn

        from msjoe.pipeline import PipelineConfig, VideoQA
        from msjoe.serve import ServeConfig, VideoService, create_app
    except ImportError as error:
        raise fail(f"{error.name} is missing", hint="pip install 'msjoe[serve]'") from error

    try:
        if model and not mllm.startswith(("http://", "https://")):
            raise ValueError("--model names a model on an HTTP server: use it with an http(s) --mllm URL")
        serve_config = ServeConfig(
            video_roots=list(video_root or []),
            state_dir=state_dir,
            max_upload_bytes=int(max_upload_mb * (1 << 20)),
            queue_size=queue_size,
        )
        pipeline = PipelineConfig(
            k=k,
            sampler=sampler,
            sampler_checkpoint=str(sampler_checkpoint) if sampler_checkpoint else None,
            fps=fps,
            max_frames=max_frames,
            store_frames=store_frames,
        )
        for root in serve_config.video_roots:
            if not Path(root).expanduser().is_dir():
                raise ValueError(f"--video-root {root} is not a folder")
        with console.status("loading the models..."):
            qa = VideoQA.from_pretrained(
                mllm,
                clip,
                device=device,
                dtype=dtype,
                cache_dir=cache_dir,
                config=pipeline,
                mllm_options={"model": model} if model else None,
            )
        app = create_app(VideoService(qa, serve_config), token=token or None)
    except (MsjoeError, ValueError, OSError) as error:
        raise fail(error) from error
    if not token and not _is_loopback(host):
        console.print(
            f"[yellow]warning:[/] listening on {escape(host)} without a token: anyone who reaches this port can "
            f"use the models and read the answers (set ${TOKEN_ENV})"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # threads after a fork-free start: avoid the warning
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
