"""Tiny, randomly initialised models for smoke tests and offline demos.

These models produce meaningless output: they exist so that every code path (loading with ``from_pretrained``,
preprocessing, generation, caching) can run on a machine without a model hub. Use real checkpoints for results.
"""

from __future__ import annotations

from pathlib import Path

from msjoe.atomic import apply_umask_to_files
from msjoe.synthetic_video import Event, event_color, write_video

DEMO_VIDEO_SECONDS = 120.0


def write_smoke_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``clip/``, ``qwen2_5_vl/`` and ``demo.mp4`` under ``folder`` and return their paths.

    Idempotent: parts already present are kept, so the command can be rerun cheaply.
    """
    from msjoe.tiny_models.clip import write_tiny_clip
    from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"clip": folder / "clip", "mllm": folder / "qwen2_5_vl", "video": folder / "demo.mp4"}
    if not (paths["clip"] / "config.json").exists():
        write_tiny_clip(paths["clip"], seed=seed)
    if not (paths["mllm"] / "config.json").exists():
        write_tiny_qwen2_5_vl(paths["mllm"], seed=seed)
    for name in ("clip", "mllm"):
        apply_umask_to_files(paths[name])  # safetensors writes 0600 whatever the umask
    if not paths["video"].exists():
        events = [Event(20.0 * i + 5.0, 20.0 * i + 12.0, event_color(i)) for i in range(6)]
        tmp = paths["video"].with_suffix(".tmp.mp4")
        write_video(tmp, duration=DEMO_VIDEO_SECONDS, fps=10.0, size=(320, 180), events=events, gop=50)
        tmp.replace(paths["video"])
    return paths
