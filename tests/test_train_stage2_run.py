"""Stage-2 runs end to end with the tiny real models: exports, checkpoints, and an interrupted run that resumes
onto exactly the losses of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest

from msjoe.data.smoke import write_smoke_dataset
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.samplers.usampler import USampler
from msjoe.train.checkpoint import list_checkpoints
from msjoe.train.config import run_config_from_dict
from msjoe.train.metrics import METRICS_FILE, read_metrics
from msjoe.train.run import train_stage2

SMALL_SAMPLER = {"widths": [8, 16], "query_width": 4, "norm_group_size": 4}


@pytest.fixture(scope="module")
def smoke_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smoke_dataset(tmp_path_factory.mktemp("smoke2"), num_items=2, seed=1)


def _config(train: Path, clip: Path, qwen: Path, out: Path, cache: Path, steps: int) -> object:
    return run_config_from_dict(
        {
            "stage": 2,
            "models": {
                "mllm": str(qwen),
                "dual_encoder": str(clip),
                "dtype": "float32",
                "sampler_config": SMALL_SAMPLER,
            },
            "data": {"train": str(train), "cache_dir": str(cache), "frame_max_pixels": 3136, "frame_store": True},
            "trainer": {
                "k": 3,
                "group_size": 4,
                "batch_size": 1,
                "steps": steps,
                "query_max_new_tokens": 12,
                "answer_max_new_tokens": 6,
                "frame_max_pixels": 3136,
                "preview_max_pixels": 3136,
                "lora_r": 2,
                "lora_alpha": 4,
                "warmup_steps": 0,
                "mllm_learning_rate": 1e-3,
                "sampler_advantage": "raw",
                "temperature": 1.5,  # varied replies: groups with unequal rewards, so both models get gradients
            },
            "run": {"output_dir": str(out), "save_every": 2, "keep_last": 3, "progress": False, "tensorboard": False},
        }
    )


def test_stage2_run_exports_a_loadable_mllm_and_resumes_exactly(
    smoke_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reference = train_stage2(_config(smoke_file, tiny_clip_dir, tiny_qwen_dir, tmp_path / "ref", cache, steps=4))
    assert reference.steps_done == 4
    losses = {r["step"]: r for r in read_metrics(tmp_path / "ref" / METRICS_FILE)}
    assert sorted(losses) == [1, 2, 3, 4]
    assert any(r["mllm_loss"] != 0 for r in losses.values()) and all(r["sampler_loss"] != 0 for r in losses.values())
    assert [p.name for p in list_checkpoints(tmp_path / "ref")] == ["step-00000002", "step-00000004"]
    assert (list_checkpoints(tmp_path / "ref")[-1] / "adapter_1" / "adapter_model.safetensors").is_file()

    exported = reference.exported
    assert (exported["mllm_adapter"] / "adapter_config.json").is_file()
    merged = TransformersMLLM(str(exported["mllm"]))  # loads like any checkpoint, processor included
    assert not any("lora" in name for name, _ in merged.model.named_parameters())  # LoRA merged in
    assert USampler(checkpoint=exported["sampler"]).training_steps == 4

    # The same run stopped right after step 3 (newest checkpoint: step 2, after an MLLM update), then resumed:
    # steps 3 and 4 are run from the checkpoint and must give exactly the reference's numbers.
    class Stop(Exception):
        pass

    def stop_at_three(step: int, trainer: object) -> None:
        if step == 3:
            raise Stop

    out = tmp_path / "interrupted"
    with pytest.raises(Stop):
        train_stage2(_config(smoke_file, tiny_clip_dir, tiny_qwen_dir, out, cache, steps=4), on_step=stop_at_three)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    resumed = train_stage2(_config(smoke_file, tiny_clip_dir, tiny_qwen_dir, out, cache, steps=4))
    assert resumed.resumed_from.name == "step-00000002"
    records = {r["step"]: r for r in read_metrics(out / METRICS_FILE)}
    assert sorted(records) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in ("reward", "mllm_loss", "sampler_loss", "sampler_entropy", "query_tokens", "answer_tokens"):
            assert records[step][key] == losses[step][key], (step, key)
