"""DualEncoder on tiny random CLIP and SigLIP checkpoints loaded from disk, the similarity matrix, the tiny builders."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msjoe.errors import ModelLoadError
from msjoe.features import DualEncoder, folder_revision, similarity
from msjoe.tiny_models.clip import write_tiny_clip, write_tiny_siglip, write_tiny_siglip2_naflex
from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl


@pytest.fixture(scope="module", params=["clip", "siglip"])
def encoder(request: pytest.FixtureRequest, tiny_clip_dir: Path, tiny_siglip_dir: Path) -> DualEncoder:
    folder = tiny_clip_dir if request.param == "clip" else tiny_siglip_dir
    return DualEncoder.from_pretrained(str(folder))


def random_frames(n: int, height: int = 45, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


# --- loading ---------------------------------------------------------------------------------------------------


def test_loads_each_family_with_its_properties(tiny_clip_dir: Path, tiny_siglip_dir: Path) -> None:
    clip = DualEncoder.from_pretrained(str(tiny_clip_dir))
    siglip = DualEncoder.from_pretrained(tiny_siglip_dir)
    assert type(clip.model).__name__ == "CLIPModel" and type(siglip.model).__name__ == "SiglipModel"
    assert clip.model_id == str(tiny_clip_dir.resolve())
    assert clip.embed_dim == clip.model.config.projection_dim
    assert siglip.embed_dim == siglip.model.config.vision_config.hidden_size
    assert clip.image_size == clip.model.config.vision_config.image_size
    assert siglip.image_size == siglip.model.config.vision_config.image_size
    # CLIP resizes the shorter side then crops; SigLIP squashes to an exact square.
    assert clip.frame_size == clip.processor.image_processor.size.shortest_edge
    assert siglip.frame_size == (siglip.image_size, siglip.image_size)
    assert clip.logit_scale == pytest.approx(math.exp(clip.model.logit_scale.item()))
    assert clip.logit_scale == pytest.approx(100.0, rel=1e-4)


def test_model_is_frozen(encoder: DualEncoder) -> None:
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())
    assert not encoder.encode_texts(["a dog"]).requires_grad


def test_local_revision_changes_when_a_checkpoint_file_changes(tmp_path: Path) -> None:
    folder = write_tiny_clip(tmp_path / "m")
    before = folder_revision(folder)
    assert DualEncoder.from_pretrained(str(folder)).revision == before
    config = folder / "config.json"
    config.write_text(config.read_text() + "\n")
    assert folder_revision(folder) != before


def test_missing_folder_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        DualEncoder.from_pretrained(str(missing))


def test_empty_folder_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        DualEncoder.from_pretrained(str(tmp_path))


def test_garbage_weights_are_a_model_load_error(tmp_path: Path) -> None:
    folder = write_tiny_clip(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=str(folder.resolve())):
        DualEncoder.from_pretrained(str(folder))


def test_folder_without_processor_is_a_model_load_error(tmp_path: Path) -> None:
    folder = write_tiny_clip(tmp_path / "m")
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelLoadError, match="processor"):
        DualEncoder.from_pretrained(str(folder))


def test_a_model_that_is_not_a_dual_encoder_is_rejected(tmp_path: Path) -> None:
    folder = write_tiny_qwen2_5_vl(tmp_path / "qwen", seed=0)
    with pytest.raises(ModelLoadError, match="not a dual encoder"):
        DualEncoder.from_pretrained(str(folder))


def test_bad_dtype_is_named() -> None:
    with pytest.raises(ValueError, match="float33"):
        DualEncoder.from_pretrained("does/not/matter", dtype="float33")


# --- encoding --------------------------------------------------------------------------------------------------


def test_image_embeddings_are_unit_float32_rows(encoder: DualEncoder) -> None:
    embeddings = encoder.encode_images(random_frames(5))
    assert embeddings.shape == (5, encoder.embed_dim) and embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu"
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))


def test_text_embeddings_are_unit_float32_rows(encoder: DualEncoder) -> None:
    embeddings = encoder.encode_texts(["a red car", "a man opening a door in the rain at night", "?"])
    assert embeddings.shape == (3, encoder.embed_dim) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert encoder.encode_texts([]).shape == (0, encoder.embed_dim)


def test_image_encoding_does_not_depend_on_batch_size(encoder: DualEncoder) -> None:
    frames = random_frames(9)
    batched = encoder.encode_images(frames, batch_size=64)
    for batch_size in (1, 4):  # 4 leaves a last partial batch of 1
        torch.testing.assert_close(encoder.encode_images(frames, batch_size=batch_size), batched, atol=1e-5, rtol=0)


def test_text_encoding_does_not_depend_on_the_batch(encoder: DualEncoder) -> None:
    texts = ["a dog", "a much longer description of a person cooking in a kitchen", "a red car"]
    together = encoder.encode_texts(texts)
    alone = torch.cat([encoder.encode_texts([text]) for text in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_encoding_is_deterministic_across_loads(encoder: DualEncoder) -> None:
    frames = random_frames(3)
    again = DualEncoder.from_pretrained(encoder.model_id)
    assert torch.equal(encoder.encode_images(frames), again.encode_images(frames))
    assert torch.equal(encoder.encode_texts(["a dog"]), again.encode_texts(["a dog"]))


def test_different_inputs_give_different_embeddings(encoder: DualEncoder) -> None:
    images = encoder.encode_images(random_frames(2, seed=1))
    texts = encoder.encode_texts(["a red car", "a green field"])
    assert not torch.allclose(images[0], images[1], atol=1e-3)
    assert not torch.allclose(texts[0], texts[1], atol=1e-3)


def test_preprocessing_matches_the_processor_on_pil_images(encoder: DualEncoder) -> None:
    """The batched tensor path must equal what a user gets from ``processor(images=[PIL...])``."""
    frames = random_frames(4, height=61, width=97)
    reference_inputs = encoder.processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")
    with torch.inference_mode():
        output = encoder.model.get_image_features(pixel_values=reference_inputs["pixel_values"])
    reference = torch.nn.functional.normalize(getattr(output, "pooler_output", output), dim=-1)
    torch.testing.assert_close(encoder.encode_images(frames), reference, atol=1e-6, rtol=0)


def test_siglip_texts_are_padded_to_the_trained_length(tiny_siglip_dir: Path) -> None:
    """SigLIP pools the last position: a text's embedding must not depend on the other texts in the batch."""
    encoder = DualEncoder.from_pretrained(str(tiny_siglip_dir))
    short, long = "a dog", "a dog running in a park with a red car on a street"
    alone = encoder.encode_texts([short])
    with_long = encoder.encode_texts([short, long])[:1]
    torch.testing.assert_close(alone, with_long, atol=1e-6, rtol=0)
    tokens = encoder.processor.tokenizer([short], padding="max_length", max_length=64)
    assert len(tokens["input_ids"][0]) == encoder.model.config.text_config.max_position_embeddings


def test_overlong_texts_are_truncated_not_rejected(encoder: DualEncoder) -> None:
    embeddings = encoder.encode_texts([" ".join(["word"] * 500)])
    assert embeddings.shape == (1, encoder.embed_dim)


def test_bad_inputs_are_named(encoder: DualEncoder) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_images(random_frames(2).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        encoder.encode_images(random_frames(2)[..., :1])
    with pytest.raises(ValueError, match="single str"):
        encoder.encode_texts("a dog")


# --- similarity ------------------------------------------------------------------------------------------------


def test_similarity_equals_a_brute_force_cosine() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, frames = torch.randn(3, 8, generator=generator), torch.randn(11, 8, generator=generator)
    expected = torch.empty(3, 11)
    for j in range(3):
        for i in range(11):
            q, f = queries[j].double(), frames[i].double()
            expected[j, i] = float(q @ f / (q.norm() * f.norm()))
    result = similarity(queries, frames)
    assert result.shape == (3, 11) and result.dtype == torch.float32
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


def test_similarity_of_encoder_outputs_is_their_dot_product(encoder: DualEncoder) -> None:
    images = encoder.encode_images(random_frames(6))
    texts = encoder.encode_texts(["a red car", "a dog"])
    torch.testing.assert_close(similarity(texts, images), texts @ images.T, atol=1e-6, rtol=0)


def test_similarity_accepts_float16_frames() -> None:
    frames = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    torch.testing.assert_close(similarity(queries, frames.half()), queries @ frames.T, atol=2e-3, rtol=0)


def test_similarity_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError, match=r"D=8.*D=16"):
        similarity(torch.randn(2, 8), torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"\[Nq, D\]"):
        similarity(torch.randn(8), torch.randn(5, 8))


# --- tiny builders ---------------------------------------------------------------------------------------------


def _folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("write", [write_tiny_clip, write_tiny_siglip, write_tiny_siglip2_naflex])
def test_tiny_builders_are_deterministic_and_seeded(write, tmp_path: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = _folder_digest(write(tmp_path / "a", seed=0))
    assert torch.equal(torch.get_rng_state(), state), "the builder must not touch the global RNG"
    assert _folder_digest(write(tmp_path / "b", seed=0)) == first
    other_seed = _folder_digest(write(tmp_path / "c", seed=1))
    assert other_seed["model.safetensors"] != first["model.safetensors"]
    assert other_seed["tokenizer.json"] == first["tokenizer.json"]


TRICKY_TEXT = "Zebra! ümlaut 42 — 東京"


def test_tiny_clip_tokenizer_round_trips_any_text(tiny_clip_dir: Path) -> None:
    tokenizer = DualEncoder.from_pretrained(str(tiny_clip_dir)).processor.tokenizer
    ids = tokenizer(TRICKY_TEXT)["input_ids"]
    # CLIP's unknown token is its end-of-text token: it may appear only at the end.
    assert tokenizer.unk_token_id not in ids[1:-1]
    # CLIP lowercases and decodes with a space after each word piece.
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == TRICKY_TEXT.lower().replace(" ", "")


def test_tiny_siglip_tokenizer_round_trips_any_text(tiny_siglip_dir: Path) -> None:
    tokenizer = DualEncoder.from_pretrained(str(tiny_siglip_dir)).processor.tokenizer
    ids = tokenizer(TRICKY_TEXT)["input_ids"]
    assert tokenizer.unk_token_id not in ids  # byte fallback covers every character
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == TRICKY_TEXT


# --- other families and the hub path --------------------------------------------------------------------------


def test_naflex_siglip2_runs_through_the_generic_processor_path(tmp_path: Path) -> None:
    """No fixed input size: frames are decoded at native size and the processor's extra inputs reach the model."""
    encoder = DualEncoder.from_pretrained(str(write_tiny_siglip2_naflex(tmp_path / "naflex")))
    assert type(encoder.model).__name__ == "Siglip2Model"
    assert encoder.frame_size is None and encoder.image_size is None
    frames = random_frames(5, height=45, width=80)
    embeddings = encoder.encode_images(frames)
    reference_inputs = encoder.processor.image_processor(
        images=[Image.fromarray(f) for f in frames], return_tensors="pt"
    )
    assert {"pixel_attention_mask", "spatial_shapes"} <= set(reference_inputs)
    with torch.inference_mode():
        reference = encoder.model.get_image_features(**reference_inputs).pooler_output
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(reference, dim=-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(encoder.encode_images(frames, batch_size=2), embeddings, atol=1e-5, rtol=0)
    assert encoder.encode_texts(["a dog"]).shape == (1, encoder.embed_dim)


HUB_SCRIPT = """
import sys
from msjoe.errors import ModelLoadError
from msjoe.features import DualEncoder
commit = sys.argv[1]
by_branch = DualEncoder.from_pretrained("org/tiny-clip")
by_commit = DualEncoder.from_pretrained("org/tiny-clip", revision=commit)
print(by_branch.model_id, by_branch.revision, by_commit.revision)
try:
    DualEncoder.from_pretrained("org/tiny-clip", revision="v2")
except ModelLoadError as err:
    print("ModelLoadError", "org/tiny-clip" in str(err))
"""


@pytest.mark.slow
def test_hub_ids_resolve_to_the_cached_commit(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """A hub id loads from the Hugging Face cache (offline here) and its revision is the snapshot's commit hash."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-clip"
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, commit], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == f"org/tiny-clip {commit} {commit}"
    assert lines[1] == "ModelLoadError True"


# --- dtypes and devices ----------------------------------------------------------------------------------------


def test_a_bfloat16_encoder_returns_float32_embeddings_on_the_host(tiny_clip_dir: Path) -> None:
    """What crosses the encoder's boundary is the same whatever the weights' dtype: the pixel values are cast to the
    model's dtype going in, the embeddings come back as unit float32 rows on the CPU (the cache and the similarity
    expect them there)."""
    half = DualEncoder.from_pretrained(str(tiny_clip_dir), dtype="bfloat16")
    full = DualEncoder.from_pretrained(str(tiny_clip_dir))
    assert half.dtype == torch.bfloat16
    frames, texts = random_frames(6), ["a red car", "a dog"]
    pairs = [
        (half.encode_images(frames), full.encode_images(frames)),
        (half.encode_texts(texts), full.encode_texts(texts)),
    ]
    for got, want in pairs:
        assert got.dtype == torch.float32 and got.device.type == "cpu" and not got.requires_grad
        torch.testing.assert_close(got.norm(dim=1), torch.ones(len(got)))
        assert (got * want).sum(dim=1).min() > 0.99  # bf16 rounding, not another computation


def test_images_are_preprocessed_on_the_host_for_a_cpu_model(tiny_clip_dir: Path, monkeypatch) -> None:
    encoder = DualEncoder.from_pretrained(str(tiny_clip_dir))
    calls: list[dict] = []
    real = type(encoder.processor.image_processor).__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(encoder.processor.image_processor), "__call__", spy)
    encoder.encode_images(random_frames(3), batch_size=2)
    assert len(calls) == 2 and not any("device" in call for call in calls)
    assert encoder._device_preprocessing is False
