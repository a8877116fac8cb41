"""Session-scoped tiny random Qwen2.5-VL, saved once per test session.

conftest.py exposes the `tiny_qwen_dir` fixture to every test module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random Qwen2.5-VL (model, tokenizer, processor) written by ``save_pretrained``."""
    return write_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=0)
