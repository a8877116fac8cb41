"""Shared fixtures: tiny random dual encoders saved like real checkpoints, and short synthetic videos.

The model folders are built once per session (about 0.2 s each) and loaded through the same ``from_pretrained``
path as a real checkpoint. Videos are small (128x72) and short so every test stays fast on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _chat_server import server  # noqa: F401  (fixture: a scripted chat-completions server on 127.0.0.1)
from _tiny_qwen_fixture import tiny_qwen_dir  # noqa: F401  (fixture: a tiny random Qwen2.5-VL folder)
from msjoe.synthetic_video import Event, event_color, write_video
from msjoe.tiny_models.clip import write_tiny_clip, write_tiny_siglip


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: results do not depend on it, and on a loaded 2-core machine two OpenMP threads
    # spin-waiting on each other make small forward passes 10-50x slower.
    torch.set_num_threads(1)


SHORT_VIDEO_SECONDS = 4.0
SHORT_VIDEO_FPS = 8.0
SHORT_VIDEO_SIZE = (128, 72)  # (width, height)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random ``CLIPModel`` + ``CLIPProcessor`` (``save_pretrained`` layout)."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random ``SiglipModel`` + ``SiglipProcessor`` (``save_pretrained`` layout)."""
    return write_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"), seed=0)


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s, 8 fps, 128x72 H.264 video; seconds 1-2 have a red background event. Do not modify it."""
    folder = tmp_path_factory.mktemp("videos")
    events = [Event(1.0, 2.0, event_color(0))]
    return write_video(
        folder / "short.mp4", duration=SHORT_VIDEO_SECONDS, fps=SHORT_VIDEO_FPS, size=SHORT_VIDEO_SIZE, events=events
    )
