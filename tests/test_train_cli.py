"""`msjoe smoke-data`, `msjoe train difficulty` and `msjoe train stage1` with the shipped tiny config."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.schema import read_qa_jsonl
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
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stage 1: 2 steps on 4 items, 0 skipped" in result.output
    assert [r["step"] for r in read_metrics(out / METRICS_FILE)] == [1, 2]
    assert (out / "sampler" / "config.json").is_file()


def test_config_errors_exit_with_code_2_and_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("stage: 1\ntrainer:\n  learning_rat: 0.1\n")
    result = runner.invoke(app, ["train", "stage1", "--config", str(config)])
    assert result.exit_code == 2
    assert "trainer.learning_rat" in result.output


def test_missing_training_file_is_a_clear_error(tmp_path: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stage: 1\nmodels:\n  mllm: {tiny_qwen_dir}\n  dual_encoder: {tiny_clip_dir}\n"
        f"data:\n  train: {tmp_path / 'absent.jsonl'}\nrun:\n  output_dir: {tmp_path / 'run'}\n"
    )
    result = runner.invoke(app, ["train", "stage1", "--config", str(config)])
    assert result.exit_code == 1
    assert "absent.jsonl" in result.output
