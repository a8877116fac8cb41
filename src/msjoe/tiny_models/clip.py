"""Tiny, randomly initialised CLIP and SigLIP dual encoders for smoke tests.

**These models are RANDOM.** They have the architecture, tokenizer format and processor of real CLIP
(``openai/clip-vit-*``), fixed-resolution SigLIP / SigLIP 2 (``google/siglip*-*-patch16-224``) and NaFlex SigLIP 2
(``google/siglip2-*-naflex``) checkpoints, but about 60k parameters and no training: their similarities are
meaningless. They exist so that tests, benchmarks and
``msjoe`` smoke runs exercise the exact code path of a real checkpoint (``save_pretrained``, then
``AutoModel`` / ``AutoProcessor.from_pretrained`` through :meth:`msjoe.features.DualEncoder.from_pretrained`) on a
CPU without a model hub.

Usage::

    from msjoe.tiny_models.clip import write_tiny_clip
    folder = write_tiny_clip("/tmp/tiny-clip")            # ~0.3 MB, well under a second
    encoder = msjoe.features.DualEncoder.from_pretrained(str(folder))

A folder is a deterministic function of ``seed``: the BPE merges are learned by a deterministic procedure (the
``tokenizers`` BPE trainer breaks ties between equally frequent pairs differently from run to run) and the weights
are drawn from a seeded generator, leaving the caller's global RNG state untouched.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import pairwise
from pathlib import Path

import torch
from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    GemmaTokenizer,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2Processor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)
from transformers.utils import logging as hf_logging

# The architecture shared by both towers of both families: width 32, 2 layers, 32-pixel images cut into 8-pixel
# patches (16 patches + class token). Small enough to build, save and load in well under a second.
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_EMBED_DIM = 16  # CLIP projection width; SigLIP's embedding width is its tower width (32)

# Short visual descriptions of the kind the pipeline sends as queries, so common words become single tokens.
_CORPUS = [
    "a red car on a street",
    "a man opening a door",
    "a dog running in a park",
    "a woman holding a cup of coffee",
    "a person cooking in a kitchen",
    "two people talking at a table",
    "a white square on a grey background",
    "a green field under a blue sky",
    "the scoreboard shows the final score",
    "a close-up of a hand writing on paper",
    "What is the person holding? The answer is A.",
    "0 1 2 3 4 5 6 7 8 9 ( ) [ ] : ; , . ! ? -",
]


def _learn_merges(words: Counter[tuple[str, ...]], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair, ties broken by the pair itself.

    ``words`` maps a word (as a tuple of initial symbols) to its count. The explicit tie-break makes the result a
    pure function of the corpus.
    """
    merges: list[tuple[str, str]] = []
    words = Counter(words)
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merged = best[0] + best[1]
        merges.append(best)
        new_words: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            symbols: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    symbols.append(merged)
                    i += 2
                else:
                    symbols.append(word[i])
                    i += 1
            new_words[tuple(symbols)] += count
        words = new_words
    return merges


def _vocab_from(special_tokens: list[str], base_symbols: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Ids in a fixed order: special tokens, base symbols, then one token per merge."""
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *base_symbols, *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    return vocab


def train_clip_tokenizer(num_merges: int = 400) -> CLIPTokenizer:
    """A byte-level BPE with CLIP's normalisation, word split and ``</w>`` end-of-word marker."""
    # Same text pipeline as CLIPTokenizer: lowercase, split into letters / digits / punctuation runs, map bytes to
    # printable characters. The last symbol of each word carries the "</w>" marker.
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    words: Counter[tuple[str, ...]] = Counter()
    for line in _CORPUS:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            words[(*word[:-1], word[-1] + "</w>")] += 1
    merges = _learn_merges(words, num_merges)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Every byte, alone or ending a word, is in the vocabulary: any text encodes without unknown tokens.
    base_symbols = alphabet + [ch + "</w>" for ch in alphabet]
    vocab = _vocab_from(["<|startoftext|>", "<|endoftext|>"], base_symbols, merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _train_gemma_tokenizer(num_merges: int = 400) -> GemmaTokenizer:
    """A SentencePiece-style BPE (``▁`` marks a space, unknown characters fall back to bytes), as SigLIP 2 uses."""
    words: Counter[tuple[str, ...]] = Counter()
    for line in _CORPUS:
        for word in line.split():
            words[tuple("▁" + word)] += 1  # every word starts with its space marker, as in SentencePiece
    merges = _learn_merges(words, num_merges)
    chars = sorted({ch for word in words for ch in word})
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: any text encodes without <unk>
    vocab = _vocab_from(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], byte_tokens + chars, merges)
    # SigLIP's text tower pools the last position; sequences end with <eos> and are padded to a fixed length.
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True, model_max_length=64)


def _seeded_model(model_cls: type[torch.nn.Module], config: object, seed: int) -> torch.nn.Module:
    """Build ``model_cls(config)`` from a seeded generator without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def _save(folder: str | Path, model: torch.nn.Module, processor: object) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Saving prints a progress bar and, for SigLIP, warnings about transformers' own default config (its default
    # special-token ids lie outside its default vocabulary): noise for a 0.3 MB model. Restore the user's settings.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    return folder


def write_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Write a RANDOM tiny ``CLIPModel`` + ``CLIPProcessor`` to ``folder`` and return the folder.

    Architecture: both towers of width 32 with 2 layers, 32x32 images in 8x8 patches, 16-dimensional joint
    embeddings. The logit scale starts at 100 (ln 100), the value trained CLIP models converge to, so code that
    uses it (Q-Frame's temperature) sees a realistic scale.
    """
    tokenizer = train_clip_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = CLIPConfig(
        text_config=dict(
            **TINY_TOWER,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=ids("<|startoftext|>"),
            eos_token_id=ids("<|endoftext|>"),  # not 2: id 2 selects CLIP's legacy "argmax id is EOS" pooling
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(**TINY_TOWER, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE),
        projection_dim=TINY_EMBED_DIM,
        logit_scale_init_value=math.log(100.0),
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(folder, _seeded_model(CLIPModel, config, seed), processor)


def write_tiny_siglip(folder: str | Path, seed: int = 0) -> Path:
    """Write a RANDOM tiny ``SiglipModel`` + ``SiglipProcessor`` to ``folder`` and return the folder.

    Laid out like the fixed-resolution SigLIP 2 checkpoints (``SiglipModel``, a Gemma-style tokenizer, an image
    processor that squashes frames to a square without cropping), which avoids the SentencePiece dependency of the
    original SigLIP tokenizer. Towers of width 32 with 2 layers, 32x32 images in 8x8 patches, 32-dimensional
    embeddings, 64 text positions (texts are padded to that length, as SigLIP was trained).
    """
    tokenizer = _train_gemma_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = SiglipConfig(
        text_config=dict(
            **TINY_TOWER,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            bos_token_id=ids("<bos>"),
            eos_token_id=ids("<eos>"),
            pad_token_id=ids("<pad>"),
        ),
        vision_config=dict(**TINY_TOWER, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE),
    )
    model = _seeded_model(SiglipModel, config, seed)
    with torch.no_grad():
        # Random init leaves scale and bias at 0; use the values trained SigLIP models end with (about 117, -12.7).
        model.logit_scale.fill_(math.log(117.0))
        model.logit_bias.fill_(-12.7)
    image_processor = SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(folder, model, processor)


def write_tiny_siglip2_naflex(folder: str | Path, seed: int = 0) -> Path:
    """Write a RANDOM tiny NaFlex ``Siglip2Model`` + ``Siglip2Processor`` to ``folder`` and return the folder.

    NaFlex keeps each image's aspect ratio and cuts it into at most ``max_num_patches`` patches (16 of 8x8 pixels
    here), so the processor returns ``pixel_attention_mask`` and ``spatial_shapes`` besides ``pixel_values``: the
    case that exercises :class:`msjoe.features.DualEncoder`'s generic path (no fixed input size).
    """
    tokenizer = _train_gemma_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = Siglip2Config(
        text_config=dict(
            **TINY_TOWER,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            bos_token_id=ids("<bos>"),
            eos_token_id=ids("<eos>"),
            pad_token_id=ids("<pad>"),
        ),
        vision_config=dict(**TINY_TOWER, patch_size=TINY_PATCH_SIZE, num_patches=16),
    )
    model = _seeded_model(Siglip2Model, config, seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(117.0))
        model.logit_bias.fill_(-12.7)
    image_processor = Siglip2ImageProcessor(patch_size=TINY_PATCH_SIZE, max_num_patches=16)
    processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(folder, model, processor)
