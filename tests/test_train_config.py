"""Run configs (YAML -> dataclasses, precise errors), data order, metrics files and checkpoints on one process."""

from __future__ import annotations

import json
import random
import re
import typing
from pathlib import Path

import pytest
import torch
import yaml

from msjoe.samplers.usampler import USamplerConfig
from msjoe.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_info,
    register_peft_hooks,
    save_checkpoint,
)
from msjoe.train.config import (
    ConfigError,
    DataConfig,
    MLLMDtype,
    ModelsConfig,
    RunConfig,
    Stage1RunConfig,
    dump_run_config,
    load_run_config,
    run_config_from_dict,
)
from msjoe.train.metrics import METRICS_FILE, MetricsLogger, read_metrics
from msjoe.train.run import batch_indices, resolve_resume
from msjoe.train.stage1 import Stage1Config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# --- configs ---------------------------------------------------------------------------------------------------------
def test_yaml_round_trip_gives_equal_config(tmp_path: Path) -> None:
    config = Stage1RunConfig(
        models=ModelsConfig(mllm="some/model", sampler_config={"widths": [8, 16]}),
        data=DataConfig(train="train.jsonl", fps=0.5, queries="question"),
        trainer=Stage1Config(learning_rate=5e-4, k=8, steps=3),
        run=RunConfig(output_dir=str(tmp_path / "run"), save_every=2),
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_run_config(config))
    assert load_run_config(path) == config


def test_scientific_notation_without_dot_is_read_as_a_number(tmp_path: Path) -> None:
    # YAML 1.1 reads "1e-3" as a string; a learning rate written that way must still work.
    path = tmp_path / "c.yaml"
    path.write_text("stage: 1\ntrainer:\n  learning_rate: 1e-3\n")
    assert load_run_config(path).trainer.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stage": 1, "trainer": {"lr": 1e-3}}, "unknown key(s) trainer.lr"),
        ({"stage": 1, "models": {"mlm": "x"}}, "unknown key(s) models.mlm"),
        ({"stage": 1, "trainer": {"k": "eight"}}, "trainer.k must be an integer"),
        ({"stage": 1, "trainer": {"k": 8.5}}, "trainer.k must be an integer"),
        ({"stage": 1, "run": {"tensorboard": "yes"}}, "run.tensorboard must be true or false"),
        ({"stage": 1, "data": {"queries": "captions"}}, "data.queries must be one of ['mllm', 'question']"),
        ({"stage": 1, "trainer": {"k": 0}}, "trainer: k must be an int >= 1, got 0"),
        ({"stage": 1, "trainer": 3}, "trainer must be a mapping"),
        ({"trainer": {}}, "add `stage: 1` or `stage: 2`"),
        ({"stage": 1, "run": {"mixed_precision": False}}, "quote it"),
        ({"stage": 1, "run": {"keep_last": -1}}, "run: keep_last must be an int >= 0, got -1"),
        ({"stage": 1, "run": {"save_every": 2.5}}, "run.save_every must be an integer, got 2.5"),
        ({"stage": 1, "data": {"limit": -1}}, "data: limit must be None or an int >= 1, got -1"),
        ({"stage": 1, "data": {"frame_max_pixels": 0}}, "data: frame_max_pixels must be an int >= 1, got 0"),
        ({"stage": 1, "data": {"max_frames": 0}}, "data: max_frames must be an int >= 1, got 0"),
        ({"stage": 1, "data": {"fps": 0}}, "data: fps must be a finite number > 0, got 0.0"),
        ({"stage": 1, "data": {"fps": float("inf")}}, "data: fps must be a finite number > 0, got inf"),
        ({"stage": 1, "models": {"sampler_config": {"widths": [8], "depth": 3}}}, "unknown USamplerConfig fields"),
        (
            {"stage": 1, "models": {"dtype": "fp32"}},
            "models.dtype must be one of ['auto', 'float32', 'bfloat16', 'float16'], got 'fp32'",
        ),
        (
            {"stage": 1, "models": {"sampler_config": {"widths": [8, 12]}}},
            "models: sampler_config: widths must be positive multiples of norm_group_size=8: [8, 12]",
        ),
        (
            {"stage": 1, "models": {"sampler_config": {"temperature": 0}}},
            "models: sampler_config: temperature must be a finite number > 0, got 0",
        ),
        ({"stage": 7}, "stage must be one of"),
    ],
)
def test_bad_configs_name_the_offending_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run_config_from_dict(data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [  # built in code, not from YAML: the dataclasses check their own fields from their annotations
        (
            lambda: ModelsConfig(dtype="fp16"),
            "dtype must be one of ('auto', 'float32', 'bfloat16', 'float16'), got 'fp16'",
        ),
        (lambda: ModelsConfig(mllm=None), "mllm must be a str, got None"),
        (lambda: ModelsConfig(sampler_seed=True), "sampler_seed must be an int, got True"),
        (lambda: DataConfig(fps=-1.0), "fps must be a finite number > 0, got -1.0"),
        (lambda: DataConfig(max_frames=0), "max_frames must be an int >= 1, got 0"),
        (lambda: DataConfig(limit=0), "limit must be None or an int >= 1, got 0"),
        (lambda: DataConfig(queries="captions"), "queries must be one of ('mllm', 'question'), got 'captions'"),
        (lambda: RunConfig(save_every=-1), "save_every must be an int >= 0, got -1"),
        (lambda: RunConfig(keep_last=1.5), "keep_last must be an int >= 0, got 1.5"),
        (lambda: RunConfig(output_dir=""), "output_dir must not be empty"),
    ],
)
def test_sections_refuse_wrong_types_and_ranges_naming_field_value_and_rule(make, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_default_sections_are_valid() -> None:
    assert ModelsConfig().dtype == "auto" and DataConfig().limit is None and RunConfig().keep_last == 3
    assert [ModelsConfig(dtype=dtype).dtype for dtype in typing.get_args(MLLMDtype)] == list(typing.get_args(MLLMDtype))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("stage*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_loads_with_a_valid_sampler_config(path: Path) -> None:
    config = load_run_config(path)
    assert config.stage == int(path.name[len("stage")])
    USamplerConfig.from_dict(config.models.sampler_config)  # the U-Sampler fields are checked too


def test_empty_sections_mean_defaults() -> None:
    config = run_config_from_dict({"stage": 1, "run": None, "trainer": None})
    assert config.run == RunConfig() and config.trainer == Stage1Config()


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: 1\ntrainer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    wrong_stage = tmp_path / "s1.yaml"
    wrong_stage.write_text("stage: 1\n")
    with pytest.raises(ConfigError, match="stage-1 config but stage 2"):
        load_run_config(wrong_stage, stage=2)


def test_overrides_set_nested_values_parsed_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stage: 1\ntrainer:\n  steps: 100\n")
    config = load_run_config(
        path, overrides=["trainer.steps=7", "run.output_dir=runs/x", "trainer.max_grad_norm=null", "data.limit=3"]
    )
    assert (config.trainer.steps, config.run.output_dir, config.trainer.max_grad_norm, config.data.limit) == (
        7,
        "runs/x",
        None,
        3,
    )
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_run_config(path, overrides=["trainer.steps"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config(path, overrides=["trainer.stpes=3"])


@pytest.mark.parametrize("name", ["stage1_paper.yaml", "stage1_tiny.yaml"])
def test_shipped_stage1_configs_load(name: str) -> None:
    config = load_run_config(CONFIGS / name)
    assert config.stage == 1
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert config.trainer.k == raw["trainer"]["k"]


# --- data order ------------------------------------------------------------------------------------------------------
def test_batch_indices_partition_each_epoch_across_processes() -> None:
    num_examples, world, batch = 10, 2, 3
    stream = []
    for step in range(5):  # 5 steps x 2 processes x 3 = 30 positions = 3 epochs
        for rank in range(world):
            stream += batch_indices(step, rank, world, batch, num_examples, seed=4)
    for epoch in range(3):
        chunk = stream[epoch * num_examples : (epoch + 1) * num_examples]
        assert sorted(chunk) == list(range(num_examples))  # every example exactly once per epoch
        expected = list(range(num_examples))
        random.Random(f"msjoe-data-order:4:{epoch}").shuffle(expected)
        assert chunk == expected
    assert stream[:10] != stream[10:20]  # epochs are reshuffled
    # Seed 5's first epoch is not seed 4's second (as it would be with a seed + epoch scheme).
    assert batch_indices(0, 0, 1, 10, 10, seed=5) != stream[10:20]


def test_batch_indices_reject_empty_data() -> None:
    with pytest.raises(ValueError, match="no training examples"):
        batch_indices(0, 0, 1, 2, 0, seed=0)


# --- metrics ---------------------------------------------------------------------------------------------------------
def test_metrics_jsonl_and_resume_truncation(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=True) as metrics:
        for step in (1, 2, 3):
            metrics.log(step, {"loss": step / 10, "nan": float("nan")}, {"frame_position": [0.05, 0.55, 0.56, 1.0]})
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == pytest.approx(0.1)
    assert records[0]["nan"] == "nan"  # still valid JSON
    assert records[0]["frame_position_histogram"] == [1, 0, 0, 0, 0, 2, 0, 0, 0, 1]
    assert list((tmp_path / "tensorboard").iterdir()), "TensorBoard event file written"

    # A crash after step 3 with the last checkpoint at step 2: step 3 will be redone, its old line must go.
    with (tmp_path / METRICS_FILE).open("a") as file:
        file.write('{"step": 4, "loss"')  # torn line
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=2) as metrics:
        metrics.log(3, {"loss": 0.33})
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 0.1), (2, 0.2), (3, 0.33)]


def test_metrics_disabled_writes_nothing(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path / "run", enabled=False) as metrics:
        metrics.log(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


# --- checkpoints on one process --------------------------------------------------------------------------------------
def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4)  # the global RNG: restored by the checkpoint
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_checkpoint_resumes_models_optimisers_rng_and_trainer_state(tmp_path: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(*_model_and_optimizer(0))
    _train_steps(model, optimizer, 3)
    generator = torch.Generator().manual_seed(5)
    save_checkpoint(accelerator, tmp_path, 3, {"step": 3, "generator": generator.get_state()}, keep_last=2)
    expected_losses = _train_steps(model, optimizer, 3)
    expected_draw = torch.rand(3, generator=generator)

    fresh = Accelerator(cpu=True)
    model2, optimizer2 = fresh.prepare(*_model_and_optimizer(1))  # different initial weights
    state = load_checkpoint(fresh, latest_checkpoint(tmp_path))
    assert state["step"] == 3
    generator2 = torch.Generator()
    generator2.set_state(state["generator"])
    assert _train_steps(model2, optimizer2, 3) == expected_losses  # weights, Adam moments and global RNG restored
    assert torch.equal(torch.rand(3, generator=generator2), expected_draw)


def test_checkpoints_are_pruned_and_incomplete_ones_ignored(tmp_path: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(*_model_and_optimizer(0))
    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    # A crash mid-save leaves an .incomplete folder, or a step folder without its marker: neither counts.
    (tmp_path / "checkpoints" / ".incomplete-step-00000004").mkdir()
    (tmp_path / "checkpoints" / "step-00000005").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    assert resolve_resume(tmp_path, "auto").name == "step-00000003"
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        resolve_resume(tmp_path, "never")
    with pytest.raises(CheckpointError, match="not a complete msjoe checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-00000005"))
    assert resolve_resume(tmp_path / "elsewhere", "never") is None
    save_checkpoint(accelerator, tmp_path, 6, {"step": 6}, keep_last=2)
    assert not (tmp_path / "checkpoints" / ".incomplete-step-00000004").exists()  # stale temp folders cleaned


def test_resuming_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path: Path) -> None:
    from accelerate import Accelerator

    from msjoe.train.checkpoint import set_aside_newer_checkpoints

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(*_model_and_optimizer(0))
    for step in (100, 200, 300):
        save_checkpoint(accelerator, tmp_path, step, {"step": step})
    older = tmp_path / "checkpoints" / "step-00000100"
    moved = set_aside_newer_checkpoints(tmp_path, older)
    assert [p.name for p in moved] == ["step-00000200", "step-00000300"]
    # The new branch's checkpoint survives pruning and is what `resume: auto` picks next.
    save_checkpoint(accelerator, tmp_path, 150, {"step": 150}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000100", "step-00000150"]
    assert latest_checkpoint(tmp_path).name == "step-00000150"
    aside = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-00000200", "step-00000300"]
    # Saving a step again replaces it whole, leaving no temporary folder behind.
    save_checkpoint(accelerator, tmp_path, 150, {"step": 151}, keep_last=2)
    assert torch.load(latest_checkpoint(tmp_path) / "trainer_state_rank0.pt")["step"] == 151
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".incomplete")]


def test_checkpoint_from_another_world_size_is_refused(tmp_path: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(*_model_and_optimizer(0))
    folder = save_checkpoint(accelerator, tmp_path, 1, {"step": 1})
    info = read_checkpoint_info(folder)
    (folder / "checkpoint.json").write_text(json.dumps({**info, "num_processes": 4}))
    with pytest.raises(CheckpointError, match="4 process"):
        load_checkpoint(accelerator, folder)


def test_peft_checkpoint_stores_only_the_adapter(tmp_path: Path) -> None:
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["0"], init_lora_weights=False))
    accelerator = Accelerator(cpu=True)
    register_peft_hooks(accelerator)
    small = torch.nn.Linear(3, 1)
    prepared_small, prepared_peft = accelerator.prepare(small, peft_model)
    folder = save_checkpoint(accelerator, tmp_path, 1, {"step": 1})
    assert (folder / "adapter_1" / "adapter_model.safetensors").is_file()
    assert not (folder / "model_1.safetensors").exists()  # the frozen base is not copied
    saved_lora = {k: v.clone() for k, v in prepared_peft.state_dict().items() if "lora_" in k}
    saved_small = {k: v.clone() for k, v in prepared_small.state_dict().items()}

    with torch.no_grad():
        for name, parameter in prepared_peft.named_parameters():
            if "lora_" in name:
                parameter.add_(1.0)
        small.weight.add_(1.0)
    load_checkpoint(accelerator, folder)
    for key, value in prepared_peft.state_dict().items():
        if "lora_" in key:
            assert torch.equal(value, saved_lora[key]), key
    assert torch.equal(prepared_small.weight, saved_small["weight"])


@pytest.mark.parametrize("name", ["ddp_1node_8gpu.yaml", "ddp_2nodes_16gpu.yaml"])
def test_shipped_accelerate_configs_parse(name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate" / name))
    assert config.distributed_type.value == "MULTI_GPU"
    assert config.num_processes == 8 * config.num_machines


@pytest.mark.parametrize("name", ["stage2_paper.yaml", "stage2_tiny.yaml"])
def test_shipped_stage2_configs_load(name: str) -> None:
    config = load_run_config(CONFIGS / name)
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert config.stage == 2
    assert (config.trainer.k, config.trainer.group_size) == (raw["trainer"]["k"], raw["trainer"]["group_size"])
