"""`msjoe smoke-data`, `msjoe train difficulty` and `msjoe train stage1` with the shipped tiny config."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _torchrun import TWO_PROCESSES, two_process_env
from msjoe.cli import app
from msjoe.data.schema import read_qa_jsonl
from msjoe.data.smoke import write_smoke_dataset
from msjoe.samplers.usampler import USampler
from msjoe.train.metrics import METRICS_FILE, read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


def test_smoke_data_difficulty_and_stage1_from_the_tiny_config(
    tmp_path: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path
) -> None:
    result = runner.invoke(app, ["smoke-data", str(tmp_path / "data"), "--items", "4"])
    assert result.exit_code == 0, result.output
    qa_file = Path(result.output.strip().splitlines()[-1])
    assert len(read_qa_jsonl(qa_file)) == 4

    rated = tmp_path / "rated.jsonl"
    args = ["train", "difficulty", str(qa_file), "-o", str(rated), "--mllm", str(tiny_qwen_dir), "-k", "4"]
    args += ["--frame-max-pixels", "3136", "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # Greedy: one answer per item, so each difficulty is exactly 0 or 1.
    assert {item.difficulty for item in read_qa_jsonl(rated)} <= {0.0, 1.0}

    out = tmp_path / "run"
    overrides = [
        f"models.mllm={tiny_qwen_dir}",
        f"models.dual_encoder={tiny_clip_dir}",
        f"data.train={qa_file}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run.output_dir={out}",
        "run.progress=false",
        "trainer.steps=2",
        "data.frame_store=true",  # answers read key frames from the JPEG store built while indexing
        "models.sampler_config={widths: [8, 16], query_width: 4, norm_group_size: 4}",
    ]
    args = ["train", "stage1", "--config", str(CONFIGS / "stage1_tiny.yaml")]
    for override in overrides:
        args += ["--set", override]
    previous_umask = os.umask(0o022)
    try:
        result = runner.invoke(app, args)
    finally:
        os.umask(previous_umask)
    assert result.exit_code == 0, result.output
    assert "stage 1: 2 steps on 4 items, 0 skipped" in result.output
    # Checkpoints and the exported sampler follow the umask (safetensors alone would write 0600).
    modes = {path.relative_to(out): stat.S_IMODE(path.stat().st_mode) for path in out.rglob("*") if path.is_file()}
    assert any(path.name == "model.safetensors" for path in modes)
    assert {path: mode for path, mode in modes.items() if mode != 0o644} == {}
    records = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2]
    # The tiny config trains: a non-zero loss and gradient at every step, and weights that moved.
    assert all(r["loss"] != 0 and r["grad_norm"] > 0 for r in records), records
    trained = USampler(checkpoint=out / "sampler")
    fresh = USampler(config=trained.config, seed=0)
    pairs = zip(trained.module.state_dict().values(), fresh.module.state_dict().values(), strict=True)
    assert any(not a.equal(b) for a, b in pairs)


def test_stage2_from_the_tiny_config_updates_the_sampler_and_the_mllm(
    tmp_path: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path
) -> None:
    from safetensors.torch import load_file

    qa_file = write_smoke_dataset(tmp_path / "data", num_items=4, seed=0)
    out = tmp_path / "run"
    overrides = [
        f"models.mllm={tiny_qwen_dir}",
        f"models.dual_encoder={tiny_clip_dir}",
        f"data.train={qa_file}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run.output_dir={out}",
        "run.progress=false",
        "models.sampler_config={widths: [8, 16], query_width: 4, norm_group_size: 4}",
    ]
    args = ["train", "stage2", "--config", str(CONFIGS / "stage2_tiny.yaml")]
    for override in overrides:
        args += ["--set", override]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # The sampler's advantage is the raw reward (r_info > 0): it moves at every step. The random MLLM's rollouts
    # never answer correctly or in format, so GRPO moves it only where a group's r_info differs (here: one rollout
    # whose reply gave no query and fell back to the question).
    assert all(r["sampler_grad_norm"] > 0 for r in records), records
    assert any(r["mllm_grad_norm"] > 0 and r["tied_group_rate"] < 1 for r in records), records
    # LoRA's B matrices start at zero: any non-zero entry is an update of the MLLM.
    adapter = load_file(out / "mllm_adapter" / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in adapter.items())


def test_config_errors_exit_with_code_2_and_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("stage: 1\ntrainer:\n  learning_rat: 0.1\n")
    result = runner.invoke(app, ["train", "stage1", "--config", str(config)])
    assert result.exit_code == 2
    assert "trainer.learning_rat" in result.output


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_missing_training_file_is_a_clear_error_before_any_model_loads(tmp_path: Path, stage: str) -> None:
    # The models do not exist either: the data file's error first means nothing was loaded (the paper's command
    # with a misspelt data.train would otherwise load a 7B MLLM before saying so).
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stage: {stage[-1]}\nmodels:\n  mllm: {tmp_path / 'no-mllm'}\n  dual_encoder: {tmp_path / 'no-clip'}\n"
        f"data:\n  train: {tmp_path / 'absent.jsonl'}\nrun:\n  output_dir: {tmp_path / 'run'}\n"
    )
    result = runner.invoke(app, ["train", stage, "--config", str(config)])
    assert result.exit_code == 1
    assert f"data.train: the training QA JSONL {tmp_path / 'absent.jsonl'} does not exist" in result.output


TRAIN_THEN_REPORT = """
import sys

import torch.distributed as dist

from msjoe.cli import app

try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print(f"process group still up at exit: {dist.is_initialized()}", flush=True)
"""


@pytest.mark.slow
def test_stage1_on_two_processes_tears_the_process_group_down(
    tmp_path: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path
) -> None:
    """Left up, gloo's worker threads outlive the command and can abort the interpreter at exit (rarely)."""
    qa_file = write_smoke_dataset(tmp_path / "data", num_items=4)
    script = tmp_path / "train_then_report.py"
    script.write_text(TRAIN_THEN_REPORT)
    overrides = [
        f"models.mllm={tiny_qwen_dir}",
        f"models.dual_encoder={tiny_clip_dir}",
        f"data.train={qa_file}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"run.output_dir={tmp_path / 'run'}",
        "run.progress=false",
        "trainer.steps=1",
        "models.sampler_config={widths: [8, 16], query_width: 4, norm_group_size: 4}",
    ]
    args = ["train", "stage1", "--config", str(CONFIGS / "stage1_tiny.yaml")]
    for override in overrides:
        args += ["--set", override]
    command = [*TWO_PROCESSES, str(script), *args]
    result = subprocess.run(command, env=two_process_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count("stage 1: 1 steps on 4 items, 0 skipped") == 1, output[-4000:]  # the main process reports
    assert output.count("process group still up at exit: False") == 2, output[-4000:]
