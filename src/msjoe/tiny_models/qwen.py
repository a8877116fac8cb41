"""A tiny, randomly initialised Qwen2.5-VL for smoke tests.

**These models are RANDOM.** They have the architecture, tokenizer format, chat template and processor of
``Qwen/Qwen2.5-VL-*-Instruct`` but about 0.3M parameters and no training: they reply with gibberish. They
exist so that tests and ``msjoe`` smoke runs exercise the exact code path of a real checkpoint (``save_pretrained``
then ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained``) on a CPU without a model hub.

Usage::

    from msjoe.tiny_models.qwen import write_tiny_qwen2_5_vl
    folder = write_tiny_qwen2_5_vl("/tmp/tiny-qwen")   # ~1 MB, about a second
    mllm = msjoe.mllm.load_mllm(str(folder))

The folder is deterministic given ``seed``: the tokenizer is trained on a fixed corpus and the weights are drawn
from a seeded generator (the caller's global RNG state is left untouched).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# Same special tokens as the real Qwen2.5-VL tokenizer (a subset: tool-call tokens are not needed).
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [
    END_OF_TEXT,
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-style chat template: ChatML turns, a default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> per image (the processor expands <|image_pad|> to the image's tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenisation split (letters, single digits, punctuation runs, newlines, spaces).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A few lines of the kind of text the pipeline sends, so common words become single tokens.
_CORPUS = [
    "You are a helpful assistant. Answer the question about the video.",
    "Question: What is the person holding? Options: A. a cup B. a phone C. a book D. a ball",
    "Answer with the option's letter from the given choices directly. The answer is A.",
    "Write up to 4 short visual descriptions of the frames that would answer the question.",
    "Query 1: a red car on a street. Query 2: a man opening a door. Query 3: a dog in a park.",
    "Frame at 12.0 seconds. Frame at 3600 seconds. The video is one hour long.",
    "0 1 2 3 4 5 6 7 8 9 ( ) [ ] : ; , . ! ? - the a an of in on at to and or with from",
]


def train_qwen_tokenizer(vocab_size: int) -> Qwen2Tokenizer:
    """Train a byte-level BPE on ``_CORPUS`` with Qwen2's pre-tokeniser and wrap it as a ``Qwen2Tokenizer``."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    bpe_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe_json["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe_json["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token=END_OF_TEXT,
        extra_special_tokens=SPECIAL_TOKENS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2_5_vl_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """The tiny architecture: 2 text layers of width 64 and a 2-block vision tower of width 32."""
    ids = tokenizer.convert_tokens_to_ids
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # head_dim 16 → 8 rotary frequencies split over (time, height, width).
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids(END_OF_TEXT),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids(END_OF_TEXT),
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,  # must equal the text width: merged patches are fed as text embeddings
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def write_tiny_qwen2_5_vl(folder: str | Path, seed: int = 0, vocab_size: int = 400) -> Path:
    """Build a tiny random Qwen2.5-VL (model, tokenizer, processor) and ``save_pretrained`` it into ``folder``.

    Returns the folder, loadable by ``AutoProcessor`` / ``AutoModelForImageTextToText`` and by
    ``msjoe.mllm.load_mllm``. The weights are random: the model produces gibberish.
    """
    folder = Path(folder)
    tokenizer = train_qwen_tokenizer(vocab_size)
    config = tiny_qwen2_5_vl_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),  # explicit: the auto default would need torchvision video I/O
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
