"""The transformers backend on a tiny random Qwen2.5-VL loaded through ``load_mllm`` like a real checkpoint."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import GenerationConfig as HFGenerationConfig
from transformers import GPT2Config

from msjoe.errors import ModelLoadError
from msjoe.mllm import GenerationConfig, ImagePart, Message, load_mllm
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl
from msjoe.video import fit_to_pixel_budget

GREEDY = GenerationConfig(max_new_tokens=12)


def frame(height: int = 224, width: int = 336, seed: int = 0, max_pixels: int | None = None) -> ImagePart:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ImagePart(pixels, max_pixels=max_pixels)


@pytest.fixture(scope="module")
def mllm(tiny_qwen_dir: Path) -> TransformersMLLM:
    model = load_mllm(str(tiny_qwen_dir), device="cpu", dtype="float32")
    assert isinstance(model, TransformersMLLM)
    return model


def ask(*parts: str | ImagePart) -> list[Message]:
    return [Message("user", list(parts))]


# --- pixel budget (pure) ---------------------------------------------------------------------------------------
def test_fit_to_pixel_budget_hand_computed_cases() -> None:
    assert fit_to_pixel_budget(224, 336, 28 * 28 * 4, 28) == (56, 56)  # scale 0.204: 45.7 x 68.6 → 2x2 patches
    assert fit_to_pixel_budget(224, 336, 28 * 28 * 16, 28) == (84, 140)  # 91.4 x 137.2 → 3x5 patches
    assert fit_to_pixel_budget(224, 336, 10**7, 28) == (224, 336)  # within budget and already multiples
    assert fit_to_pixel_budget(100, 150, 10**7, 28) == (112, 140)  # within budget: rounded to the nearest
    assert fit_to_pixel_budget(20, 20, 100, 1) == (10, 10)
    assert fit_to_pixel_budget(10, 5000, 100, 28) == (28, 28)  # never below one multiple per side
    assert fit_to_pixel_budget(10, 5000, 28 * 28 * 3, 28) == (28, 84)  # a side held at 28: the other shrinks


def test_fit_to_pixel_budget_properties_on_a_grid() -> None:
    for height in (1, 27, 50, 240, 719, 1080):
        for width in (3, 28, 333, 640, 1920):
            for budget in (784, 3136, 25_088, 200_704, 1_003_520):
                h, w = fit_to_pixel_budget(height, width, budget, 28)
                assert h % 28 == 0 and w % 28 == 0 and h >= 28 and w >= 28
                assert h * w <= max(budget, 28 * 28)
                assert h <= max(28, round(height / 28) * 28) and w <= max(28, round(width / 28) * 28)
                # aspect ratio kept up to one patch of rounding per side
                if min(h, w) >= 56 and min(height, width) >= 56:
                    assert abs(math.log((h / w) / (height / width))) < math.log(2)


# --- loading ---------------------------------------------------------------------------------------------------
def test_tiny_model_is_deterministic_given_seed(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    again = write_tiny_qwen2_5_vl(tmp_path / "again", seed=0)
    other = write_tiny_qwen2_5_vl(tmp_path / "other", seed=1)
    reference = load_file(tiny_qwen_dir / "model.safetensors")
    same, different = load_file(again / "model.safetensors"), load_file(other / "model.safetensors")
    assert all(torch.equal(reference[name], same[name]) for name in reference)
    assert not all(torch.equal(reference[name], different[name]) for name in reference)
    assert (again / "tokenizer.json").read_text() == (tiny_qwen_dir / "tokenizer.json").read_text()


def test_missing_folder_raises_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_mllm(str(missing))


def test_folder_without_a_model_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_mllm(str(tmp_path))


def test_text_only_architecture_raises_model_load_error(tmp_path: Path) -> None:
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_mllm(str(tmp_path))


def test_file_instead_of_folder_raises_model_load_error(tiny_qwen_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_mllm(str(tiny_qwen_dir / "config.json"))


def test_unknown_dtype_is_rejected(tiny_qwen_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_mllm(str(tiny_qwen_dir), dtype="float8")


# --- chat ------------------------------------------------------------------------------------------------------
def test_chat_with_one_and_several_images_returns_text(mllm: TransformersMLLM) -> None:
    one = mllm.complete(ask(frame(), "What happens?"), GREEDY)
    several = mllm.complete(ask("Frames:", frame(seed=1), frame(seed=2), frame(seed=3), "What happens?"), GREEDY)
    for completion in (one, several):
        assert isinstance(completion.text, str) and completion.text
        assert 1 <= len(completion.token_ids) <= GREEDY.max_new_tokens
    assert isinstance(mllm.chat(ask("no image at all"), GREEDY), str)


def test_images_are_placed_where_they_appear_in_the_message(mllm: TransformersMLLM) -> None:
    ids = mllm.encode(ask("before", frame(max_pixels=3136), "after"))["input_ids"][0].tolist()
    text = mllm.tokenizer.decode(ids)
    assert text.index("before") < text.index("<|vision_start|>") < text.index("<|vision_end|>") < text.index("after")


def test_greedy_decoding_is_deterministic_and_follows_the_argmax(mllm: TransformersMLLM) -> None:
    messages = ask(frame(), "Describe.")
    first, second = mllm.complete(messages, GREEDY), mllm.complete(messages, GREEDY)
    assert first == second
    with torch.no_grad():
        logits = mllm.model(**mllm.encode(messages)).logits[0, -1]
    assert first.token_ids[0] == int(logits.argmax())


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(mllm: TransformersMLLM) -> None:
    messages = ask(frame(), "Describe.")
    seeded = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=7)
    rng_state = torch.get_rng_state()
    first, second = mllm.chat(messages, seeded), mllm.chat(messages, seeded)
    assert torch.equal(rng_state, torch.get_rng_state())
    assert first == second
    other_seed = mllm.chat(messages, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=8))
    assert other_seed != first  # near-uniform random model over 400 tokens: a collision is ~impossible


def test_max_pixels_sets_the_number_of_image_tokens(mllm: TransformersMLLM) -> None:
    full = mllm.num_image_tokens(ask(frame(224, 336)))
    small = mllm.num_image_tokens(ask(frame(224, 336, max_pixels=28 * 28 * 16)))
    tiny = mllm.num_image_tokens(ask(frame(224, 336, max_pixels=28 * 28 * 4)))
    assert full == (224 // 28) * (336 // 28)  # one token per 28x28 merged patch
    assert small == 3 * 5 and tiny == 2 * 2  # the sizes of test_fit_to_pixel_budget_hand_computed_cases
    both = mllm.num_image_tokens(ask(frame(224, 336, max_pixels=28 * 28 * 4), frame(224, 336)))
    assert both == tiny + full  # the budget is per image


# --- scoring ---------------------------------------------------------------------------------------------------
def test_token_logprobs_match_the_scores_of_generate(mllm: TransformersMLLM) -> None:
    messages = ask(frame(), "Describe.", frame(seed=5, max_pixels=3136))
    inputs = mllm.encode(messages)
    with torch.no_grad():
        output = mllm.model.generate(
            **inputs, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        generated = output.sequences[0, inputs["input_ids"].shape[1] :]
        expected = torch.stack(
            [
                torch.log_softmax(step[0].float(), -1)[token]
                for step, token in zip(output.logits, generated, strict=True)
            ]
        )
        scored = mllm.token_logprobs(messages, generated.tolist())
    assert scored.shape == (len(generated),)
    assert torch.isfinite(scored).all() and (scored <= 0).all()
    torch.testing.assert_close(scored, expected, atol=1e-4, rtol=1e-4)


def test_token_logprobs_of_text_match_a_manual_forward_at_temperature(mllm: TransformersMLLM) -> None:
    messages = ask(frame(max_pixels=3136), "Which option?")
    completion = "The answer is A."
    ids = mllm.completion_token_ids(completion, add_end_token=True)
    assert ids[-1] == mllm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    inputs = mllm.encode(messages)
    prompt_length = inputs["input_ids"].shape[1]
    full = mllm.encode([*messages, Message("assistant", [completion])])["input_ids"][0]
    # the chat template renders a reply as the prompt, then exactly the ids we score (end of turn included)
    assert full[:prompt_length].tolist() == inputs["input_ids"][0].tolist()
    assert full[prompt_length : prompt_length + len(ids)].tolist() == ids
    with torch.no_grad():
        all_ids = torch.cat([inputs["input_ids"][0], torch.tensor(ids)])[None]
        logits = mllm.model(
            input_ids=all_ids,
            attention_mask=torch.ones_like(all_ids),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"][0], torch.zeros(len(ids), dtype=torch.long)])[
                None
            ],
        ).logits[0]
        manual = torch.log_softmax(logits[prompt_length - 1 : -1].float() / 0.7, -1)
        expected = manual[torch.arange(len(ids)), torch.tensor(ids)]
        scored = mllm.token_logprobs(messages, ids, temperature=0.7)
        from_text = mllm.token_logprobs(messages, completion, temperature=0.7)
    torch.testing.assert_close(scored, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_text, scored[:-1])  # text is scored without the end token


def test_option_probabilities_are_the_first_token_logprobs_renormalised(mllm: TransformersMLLM) -> None:
    """Checked against an independent path: token_logprobs of each one-letter completion (same forward)."""
    messages = ask(frame(max_pixels=3136), "Which option? A. red B. blue C. green D. black")
    scores = mllm.option_probabilities(messages, ["A", "B", "C", "D"])
    with torch.no_grad():
        raw = {letter: math.exp(float(mllm.token_logprobs(messages, letter)[0])) for letter in "ABCD"}
    mass = sum(raw.values())
    assert scores.letter_mass == pytest.approx(mass, rel=1e-4)
    assert 0 < scores.letter_mass < 1  # random weights spread mass over the whole vocabulary
    assert sum(scores.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    for letter in "ABCD":
        assert scores.probabilities[letter] == pytest.approx(raw[letter] / mass, rel=1e-4)
    two = mllm.option_probabilities(messages, ["A", "B"])  # fewer options: renormalised over those only
    assert two.probabilities["A"] == pytest.approx(raw["A"] / (raw["A"] + raw["B"]), rel=1e-4)


def test_option_probabilities_of_a_left_padded_batch_equal_each_alone(mllm: TransformersMLLM) -> None:
    chats = [
        ask(frame(max_pixels=3136), "Which? A. x B. y C. z"),
        ask(frame(seed=1, max_pixels=3136), frame(seed=2, max_pixels=3136), "Which one of these, A or B, fits?"),
        ask("No image at all: A or B?"),
    ]  # different lengths: the shorter rows are padded on the left
    letters = [["A", "B", "C"], ["A", "B"], ["A", "B"]]
    batched = mllm.option_probabilities_many(chats, letters)
    for chat, chat_letters, scores in zip(chats, letters, batched, strict=True):
        alone = mllm.option_probabilities(chat, chat_letters)
        assert list(scores.probabilities) == chat_letters
        assert scores.letter_mass == pytest.approx(alone.letter_mass, rel=1e-3)
        for letter in chat_letters:
            assert scores.probabilities[letter] == pytest.approx(alone.probabilities[letter], abs=1e-4)
    assert mllm.option_probabilities_many([], []) == []
    with pytest.raises(ValueError, match="one letter list per chat"):
        mllm.option_probabilities_many(chats, letters[:2])


def test_option_probabilities_refuse_bad_letters(mllm: TransformersMLLM) -> None:
    messages = ask("Which option?")
    with pytest.raises(ValueError, match="distinct and non-empty"):
        mllm.option_probabilities(messages, ["A", "A"])
    with pytest.raises(ValueError, match="expected one"):
        mllm.option_probabilities(messages, ["A", "option B"])


def test_token_logprobs_carry_gradients_only_when_autograd_is_on(mllm: TransformersMLLM) -> None:
    messages = ask(frame(max_pixels=3136), "Which option?")
    with torch.no_grad():
        assert not mllm.token_logprobs(messages, "A").requires_grad
    mllm.model.zero_grad()
    with torch.enable_grad():
        logprobs = mllm.token_logprobs(messages, "The answer is A")
        logprobs.sum().backward()
    lm_head_grad = mllm.model.lm_head.weight.grad
    vision_grad = next(mllm.model.model.visual.parameters()).grad
    assert lm_head_grad is not None and lm_head_grad.abs().sum() > 0
    assert vision_grad is not None and vision_grad.abs().sum() > 0  # gradients reach the image tower
    mllm.model.zero_grad(set_to_none=True)


def test_token_logprobs_rejects_empty_completion(mllm: TransformersMLLM) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        mllm.token_logprobs(ask("hi"), [])


def test_the_checkpoints_own_sampling_settings_do_not_override_ours(
    mllm: TransformersMLLM, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    # Qwen2.5-VL ships top_k=1 and repetition_penalty=1.05; left in place, sampling would be greedy.
    folder = tmp_path / "qwen-with-settings"
    shutil.copytree(tiny_qwen_dir, folder)
    shipped = HFGenerationConfig.from_pretrained(folder)
    shipped.update(top_k=1, repetition_penalty=50.0, no_repeat_ngram_size=1, do_sample=True)
    shipped.save_pretrained(folder)
    loaded = load_mllm(str(folder), device="cpu", dtype="float32")
    messages = ask(frame(), "Describe.")
    assert loaded.chat(messages, GREEDY) == mllm.chat(messages, GREEDY)
    samples = {loaded.chat(messages, GenerationConfig(max_new_tokens=8, temperature=1.0, seed=s)) for s in range(4)}
    assert len(samples) == 4


def test_image_placeholder_tokens_are_never_generated_nor_scored(mllm: TransformersMLLM) -> None:
    image_pad = mllm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad in mllm.placeholder_token_ids
    messages = ask(frame(max_pixels=3136), "Describe.")
    first = mllm.complete(messages, GREEDY).token_ids[0]
    weight = mllm.model.lm_head.weight
    saved = weight[image_pad].detach().clone()
    try:
        with torch.no_grad():
            weight[image_pad] = 10 * weight[first]  # the placeholder is now the most likely next token by far
            logits = mllm.model(**mllm.encode(messages)).logits[0, -1]
        assert int(logits.argmax()) == image_pad
        assert image_pad not in mllm.complete(messages, GREEDY).token_ids
        sampled = mllm.complete(messages, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=0))
        assert image_pad not in sampled.token_ids
    finally:
        with torch.no_grad():
            weight[image_pad] = saved
    with pytest.raises(ValueError, match="placeholder"):
        mllm.token_logprobs(messages, [first, image_pad])


def test_token_logprobs_can_run_through_a_wrapping_module(mllm: TransformersMLLM) -> None:
    class Recording(torch.nn.Module):
        """Stands in for a DDP or peft wrapper: forwards to the same model and counts the calls."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, **inputs: object) -> object:
            self.calls += 1
            return self.inner(**inputs)

    wrapper = Recording(mllm.model)
    messages = ask(frame(max_pixels=3136), "Which option?")
    with torch.no_grad():
        direct = mllm.token_logprobs(messages, "The answer is A")
        wrapped = mllm.token_logprobs(messages, "The answer is A", model=wrapper)
    assert wrapper.calls == 1
    torch.testing.assert_close(wrapped, direct, rtol=0, atol=0)


def test_batched_completion_matches_one_chat_at_a_time(mllm: TransformersMLLM) -> None:
    chats = [
        ask(frame(max_pixels=3136), "Describe."),
        ask("A longer question with more words, then two frames:", frame(seed=1), frame(112, 112, seed=2), "What?"),
        ask("no image at all"),
    ]
    one_by_one = [mllm.complete(chat, GREEDY).token_ids for chat in chats]
    batched = mllm.complete_batch(chats, GREEDY)
    assert [c.token_ids for c in batched] == one_by_one  # left padding changes nothing
    assert [c.text for c in batched] == [mllm.complete(chat, GREEDY).text for chat in chats]
    end = mllm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=3)
    samples = mllm.complete_batch(chats[:2], sampled, samples_per_chat=3)
    assert len(samples) == 6 and samples == mllm.complete_batch(chats[:2], sampled, samples_per_chat=3)
    for completion in samples:  # replies stop at their first end token: no padding is returned
        assert end not in completion.token_ids[:-1] and 1 <= len(completion.token_ids) <= 12
    assert mllm.complete_batch([], GREEDY) == []
    with pytest.raises(ValueError, match="samples_per_chat"):
        mllm.complete_batch(chats, GREEDY, samples_per_chat=0)


def test_reusing_encodings_preprocesses_each_chat_once_with_identical_inputs(
    mllm: TransformersMLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = ask("Two frames:", frame(seed=1), frame(112, 112, seed=2), "What?")
    same_text = ask("Two frames:", frame(seed=1), frame(112, 112, seed=2), "What?")  # equal, but another object
    reference = mllm.encode(chat)
    single = mllm.encode_batch([chat])  # a lone chat in a batch needs no padding: its own inputs
    for key, value in reference.items():
        torch.testing.assert_close(single[key], value, rtol=0, atol=0)

    renders: list[int] = []
    real_render = mllm._render
    monkeypatch.setattr(mllm, "_render", lambda messages: renders.append(id(messages)) or real_render(messages))
    with mllm.reusing_encodings():
        first, again, other = mllm.encode(chat), mllm.encode_batch([chat]), mllm.encode(same_text)
        with mllm.reusing_encodings():  # nested blocks share the outer memo
            mllm.encode_batch([chat, same_text])
        mllm.encode(chat)
    mllm.encode(chat)  # outside the block: preprocessed anew
    assert renders == [id(chat), id(same_text), id(chat)]  # by identity, not by value
    for encoded in (first, again, other):
        for key, value in reference.items():
            torch.testing.assert_close(encoded[key], value, rtol=0, atol=0)


def test_encode_batch_equals_the_processors_own_batching(mllm: TransformersMLLM) -> None:
    chats = [
        ask(frame(max_pixels=3136), "Describe."),
        ask("A longer question with more words, then two frames:", frame(seed=1), frame(112, 112, seed=2), "What?"),
        ask("no image at all"),
    ]
    rendered = [mllm._render(chat) for chat in chats]
    expected = mllm.processor(
        text=[prompt for prompt, _ in rendered],
        images=[image for _, images in rendered for image in images],
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    batch = mllm.encode_batch(chats)
    assert set(batch) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(batch[key], value, rtol=0, atol=0, msg=key)


def test_a_bfloat16_model_generates_and_scores_in_float32(tiny_qwen_dir: Path) -> None:
    """bf16 weights (the GPU default) on the CPU: generation works and token log-probabilities come back float32."""
    half = load_mllm(str(tiny_qwen_dir), device="cpu", dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16
    chat = ask(frame(seed=3, max_pixels=56 * 56), "What is shown?")
    completion = half.complete(chat, GREEDY)
    logprobs = half.token_logprobs(chat, completion.token_ids)
    assert logprobs.dtype == torch.float32 and len(logprobs) == len(completion.token_ids)
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()


def test_from_model_wraps_a_model_built_in_memory(mllm: TransformersMLLM, tiny_qwen_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_dir, dtype=torch.float32)
    wrapped = TransformersMLLM.from_model(model, AutoProcessor.from_pretrained(tiny_qwen_dir), model_id="memory")
    chat = ask(frame(seed=4, max_pixels=56 * 56), "Describe.")
    assert wrapped.complete(chat, GREEDY) == mllm.complete(chat, GREEDY)
    assert wrapped.placeholder_token_ids == mllm.placeholder_token_ids and wrapped.image_multiple == 28
    with pytest.raises(ModelLoadError, match="'memory' has no multimodal processor with a chat template"):
        TransformersMLLM.from_model(model, AutoProcessor.from_pretrained(tiny_qwen_dir).tokenizer, model_id="memory")
