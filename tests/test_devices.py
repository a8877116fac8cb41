"""Device settings are checked before any model loads: a device this machine lacks is a one-line error that says
which devices exist, from every command and loader that takes one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.devices import DeviceError, available_devices, check_device
from msjoe.features import DualEncoder
from msjoe.mllm.transformers_backend import TransformersMLLM

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_cpu_and_auto_are_always_accepted() -> None:
    assert check_device("cpu") == "cpu" and check_device(" auto ") == "auto"
    assert check_device(torch.device("cpu")) == "cpu"
    assert available_devices()[0] == "cpu"


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_missing_cuda_names_the_devices_that_exist(device: str) -> None:
    with pytest.raises(DeviceError) as raised:
        check_device(device)
    message = str(raised.value)
    assert f"device {device!r} is not available" in message and "this machine has: cpu (or auto)" in message


@pytest.mark.parametrize(("device", "reason"), [("tpu", "unknown device 'tpu'"), ("garbage", "unknown device"),
                                                ("meta", "not one msjoe can run models on")])  # fmt: skip
def test_unknown_or_unusable_device_types(device: str, reason: str) -> None:
    with pytest.raises(DeviceError, match=reason) as raised:
        check_device(device)
    assert "this machine has: cpu" in str(raised.value)
    assert isinstance(raised.value, ValueError)  # callers that catch ValueError for bad settings still do


def test_an_index_past_the_last_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine with one GPU, as torch reports it; only the availability queries are replaced.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceError, match=r"'cuda:1' does not exist: 1 CUDA device \(numbered from 0\)") as raised:
        check_device("cuda:1")
    assert "cpu, cuda:0" in str(raised.value)


@no_cuda
def test_library_loaders_check_before_loading(tmp_path: Path) -> None:
    # The model folders do not exist: a loader that got past the device check would report that instead.
    with pytest.raises(DeviceError, match="'cuda' is not available"):
        DualEncoder.from_pretrained(tmp_path / "no-clip", device="cuda")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        TransformersMLLM(str(tmp_path / "no-mllm"), device="tpu")


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu"])
@pytest.mark.parametrize("command", ["select", "ask", "index", "eval"])
def test_every_command_reports_a_missing_device_without_a_traceback(
    command: str, device: str, tiny_clip_dir: Path, short_video: Path, tmp_path: Path
) -> None:
    args = {
        "select": ["select", short_video, "-q", "a red screen"],
        "ask": ["ask", short_video, "What colour?", "--mllm", tmp_path / "no-mllm"],
        "index": ["index", short_video],
        "eval": ["eval", "--benchmark", "longvideobench", "--annotations", tmp_path, "--out", tmp_path / "out"],
    }[command]
    common = ["--clip", tiny_clip_dir, "--cache-dir", tmp_path / "cache", "--device", device]
    result = CliRunner().invoke(app, [str(a) for a in [*args, *common]])
    assert result.exit_code == 1, result.output
    assert "this machine has: cpu (or auto)" in result.output and "Traceback" not in result.output
    assert "rerun to resume" not in result.output  # nothing ran, so there is nothing to resume
    assert not (tmp_path / "cache").exists()  # stopped before indexing anything
