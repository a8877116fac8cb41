"""bench/gpu_suite.py cannot rot: its --tiny mode runs every section on the CPU, with the smallest sizes, and the
real-size configs it builds from are checked against the published models' parameter counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _longvideo  # noqa: E402
import gpu_suite  # noqa: E402
from msjoe.synthetic_video import read_frame_index  # noqa: E402
from msjoe.video import candidate_timestamps, decode_frames, probe  # noqa: E402


def test_the_configs_build_the_published_model_sizes() -> None:
    """On the meta device (no memory): Qwen2.5-VL-7B-Instruct has 8,292,166,656 parameters, CLIP ViT-L/14
    427,616,513 (the counts of the published checkpoints)."""
    from transformers import CLIPConfig, CLIPModel, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        qwen = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig.from_dict(gpu_suite._config("qwen2_5_vl_7b_instruct"))
        )
        clip = CLIPModel(CLIPConfig.from_dict(gpu_suite._config("clip_vit_large_patch14")))
    assert sum(p.numel() for p in qwen.parameters()) == 8_292_166_656
    assert sum(p.numel() for p in clip.parameters()) == 427_616_513
    assert gpu_suite._preprocessor("qwen2_5_vl_7b_instruct")["max_pixels"] == 12845056


def test_the_real_size_models_build_on_the_meta_device() -> None:
    """The real-size builders (config, token ids, processors, TransformersMLLM.from_model), without the memory."""
    meta = torch.device("meta")
    mllm = gpu_suite.real_size_qwen(meta, torch.bfloat16, "sdpa")
    assert mllm.model.dtype == torch.bfloat16 and mllm.model.config._attn_implementation == "sdpa"
    assert (
        mllm.image_multiple == 28
        and mllm.tokenizer.convert_tokens_to_ids("<|image_pad|>") in mllm.placeholder_token_ids
    )
    assert mllm.model.config.image_token_id == mllm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    encoder = gpu_suite.real_size_clip(meta, torch.bfloat16)
    assert encoder.dtype == torch.bfloat16 and encoder.frame_size == 224 and encoder.image_size == 224


def test_a_video_generated_in_pieces_is_one_continuous_video(tmp_path: Path) -> None:
    path = _longvideo.long_video(0.4, parts=3, folder=tmp_path, verbose=False)  # 600 frames: 3 GOPs of 250 at most
    info = probe(path)
    assert info.num_frames == 600 and abs(info.duration - 24.0) < 0.05
    times = candidate_timestamps(info)
    frames = decode_frames(path, times, size=(90, 160))
    assert [read_frame_index(f) for f in frames] == [int(t * _longvideo.FPS) for t in times]
    assert not list(tmp_path.glob("*part*"))  # the pieces are removed


def test_tiny_suite_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = gpu_suite.main(
        ["--tiny", "--out", str(out), "--video-minutes", "0.2", "--video-parts", "2", "--workers", "2", "--ks", "4",
         "--stage2-k", "4", "--group-size", "2", "--answer-batch", "2", "--query-tokens", "4", "--answer-tokens", "2",
         "--repeats", "1", "--sampler-repeats", "2"]
    )  # fmt: skip
    sections = results["sections"]
    for name in gpu_suite.SECTIONS:
        assert "error" not in sections[name] and "skipped" not in sections[name], sections[name]
    index = sections["index"]
    assert index["candidates"] == 12
    for label in ("decode only, workers", "encode only", "index, in this process", "index, workers"):
        assert index[label]["median_s"] > 0 and index[label]["frames_per_s"] > 0
    ask = sections["ask"]["K=4"]
    assert set(ask["stages"]) >= {"index", "query_reasoning", "similarity", "selection", "answer"}
    assert ask["prefill_tokens"]["answer turn"] > ask["prefill_tokens"]["query turn"] > 0  # 4 frames vs 2 previews
    assert ask["generated_tokens"] == {"query turn": 4, "answer turn": 2}  # random weights: the whole budget
    assert sections["answering"]["batched"]["answers_per_s"] > 0
    for label in ("gold probability, one at a time", "gold probability, batched"):
        assert sections["answering"][label]["answers_per_s"] > 0
    stage2 = sections["stage2"]
    for finetune in ("lora", "full"):
        for checkpointing in ("off", "on"):
            step = stage2[f"{finetune}, gradient checkpointing {checkpointing}"]
            assert step["median_s"] > 0 and np.isfinite(step["mllm_loss"])
    assert sections["usampler"]["forward + select, T=3600, K=32"]["median_s"] > 0
    assert json.loads((out / "results.json").read_text())["sections"].keys() == sections.keys()
    table = (out / "results.md").read_text()
    assert "| stage2 | lora, gradient checkpointing on |" in table and results["command"] in table
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # scratch files are removed


@pytest.mark.parametrize("argv", [["--out", "x", "--sections", "nope"]])
def test_unknown_sections_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(argv)


def test_the_suite_uses_no_private_names_of_msjoe() -> None:
    """The suite times msjoe through its public API, so refactoring msjoe's internals cannot break it unseen."""
    import ast

    tree = ast.parse((BENCH / "gpu_suite.py").read_text())
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("msjoe")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    private += [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name) and node.value.id in {"msjoe", "decode_worker", "index"}
    ]  # fmt: skip
    assert private == []
