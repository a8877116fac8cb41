"""Local image-text-to-text chat models through Hugging Face ``transformers``.

Any checkpoint that ``AutoProcessor`` + ``AutoModelForImageTextToText`` load and whose processor has a chat
template works; Qwen2.5-VL (the paper's base model, e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``) is the reference.
Besides chatting, the backend scores completions (:meth:`TransformersMLLM.token_logprobs`) with gradients, which
is what GRPO training needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature
from transformers import GenerationConfig as HFGenerationConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from msjoe.devices import check_device
from msjoe.errors import ModelLoadError
from msjoe.hub import require_hub_model
from msjoe.mllm import register_backend
from msjoe.mllm.base import MLLM, GenerationConfig, ImagePart, Message, OptionScores

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Config fields naming the tokens that mark where images and videos go in the input (Qwen2-VL / 2.5-VL, LLaVA...).
_PLACEHOLDER_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass(frozen=True)
class Completion:
    """A generated reply: its text and the exact token ids the model produced (end token included if reached).

    Pass ``token_ids`` back to :meth:`TransformersMLLM.token_logprobs` to score exactly what was sampled;
    re-tokenising ``text`` can give different ids. ``prompt_tokens`` is the length of the prompt in the model's
    input (text and image tokens, no padding): a scoring pass over the reply runs ``prompt_tokens + len(token_ids)``
    positions, which lets a trainer size its batches without encoding the chat again.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int


def _looks_like_local_path(model: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else (absolute, relative with ./, ~, deeper) is a path."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


@register_backend("transformers")
class TransformersMLLM(MLLM):
    """A chat model run in-process with ``transformers``.

    Args:
        model: a Hugging Face id (``"Qwen/Qwen2.5-VL-7B-Instruct"``) or a local folder written by
            ``save_pretrained``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"`` (``device_map="auto"``: spread over the
            visible GPUs, else CPU).
        dtype: ``"auto"`` (the checkpoint's dtype), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        revision: the hub branch, tag or commit to load.
        attn_implementation: passed to ``from_pretrained`` (``"sdpa"``, ``"flash_attention_2"``, ...).

    Decoding uses only the :class:`GenerationConfig` given to :meth:`chat`: the checkpoint's own sampling
    defaults (Qwen2.5-VL ships ``top_k=1``, which would silently turn sampling into greedy decoding, and
    ``repetition_penalty=1.05``) are ignored so that runs are defined by msjoe's settings alone.

    ``ImagePart.max_pixels`` is applied before the processor, snapped to the processor's resize granularity
    (patch size x merge size, 28 for Qwen2.5-VL), so it sets the number of visual tokens: about
    ``max_pixels / 28**2``. The processor's own limits still apply (Qwen: at least 4 tokens an image).
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        revision: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        device = check_device(device)  # before the weights load: a missing GPU is a one-line error
        self.model_id = model
        location: str | Path = model
        if Path(model).expanduser().exists():
            location = Path(model).expanduser()
            if not location.is_dir():
                raise ModelLoadError(f"model path {model!r} is a file; expected a folder written by save_pretrained")
        elif _looks_like_local_path(model):
            raise ModelLoadError(f"model folder {model!r} does not exist")
        else:
            require_hub_model(model, revision)

        load_options = {"revision": revision}
        # device_map loads the weights straight onto the device (no full copy in CPU memory first).
        model_options = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation, "device_map": device}
        try:
            self.processor = AutoProcessor.from_pretrained(location, **load_options)
            self.model = AutoModelForImageTextToText.from_pretrained(location, **load_options, **model_options)
        except Exception as error:  # the loaders raise OSError, ValueError, KeyError, ...: all mean "cannot load"
            raise ModelLoadError(
                f"cannot load an image-text-to-text model from {model!r} on device {device!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        self._attach()

    @classmethod
    def from_model(cls, model: torch.nn.Module, processor: object, *, model_id: str = "in-memory") -> TransformersMLLM:
        """Wrap a model already built in memory (e.g. random weights from a config, as ``bench/gpu_suite.py`` does
        at real size without downloading weights) and its processor; everything after loading is as in ``__init__``.
        """
        self = cls.__new__(cls)
        self.model_id = model_id
        self.processor = processor
        self.model = model
        self._attach()
        return self

    def _attach(self) -> None:
        """Check the processor and set up generation around :attr:`model` and :attr:`processor`."""
        if getattr(self.processor, "chat_template", None) is None or not hasattr(self.processor, "image_processor"):
            raise ModelLoadError(
                f"{self.model_id!r} has no multimodal processor with a chat template (use an instruction-tuned "
                "checkpoint)"
            )
        self.model.eval()
        self.tokenizer = self.processor.tokenizer
        # Preprocessed chats by id, while reusing_encodings() is active (None outside it).
        self._encodings: dict[int, tuple[list[Message], BatchFeature]] | None = None
        # generate() fills every setting a call leaves unset from the checkpoint's generation_config (Qwen2.5-VL
        # ships top_k=1 and repetition_penalty=1.05: sampling would be greedy and every GRPO rollout identical).
        # Keep only its special-token ids, so our GenerationConfig alone decides how to decode.
        shipped = self.model.generation_config
        self.model.generation_config = HFGenerationConfig(
            bos_token_id=shipped.bos_token_id,
            eos_token_id=shipped.eos_token_id or self.tokenizer.eos_token_id,
            pad_token_id=shipped.pad_token_id if shipped.pad_token_id is not None else self.tokenizer.pad_token_id,
        )
        # A reply containing an image placeholder could not be scored (the forward pass would look for an image
        # behind it), and is never meaningful: generation suppresses these tokens.
        placeholders = {getattr(self.model.config, name, None) for name in _PLACEHOLDER_TOKEN_FIELDS}
        placeholders |= {getattr(self.processor, name, None) for name in ("image_token_id", "video_token_id")}
        self.placeholder_token_ids: frozenset[int] = frozenset(i for i in placeholders if isinstance(i, int))
        image_processor = self.processor.image_processor
        patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
        self.image_multiple: int = patch * merge if isinstance(patch, int) and isinstance(merge, int) else 1

    @property
    def device(self) -> torch.device:
        """Where inputs go (the first device when the model is spread with ``device="auto"``)."""
        return self.model.device

    # --- inputs ---------------------------------------------------------------------------------------------
    def encode(self, messages: list[Message]) -> BatchFeature:
        """Model inputs for ``messages`` followed by the assistant-turn opener (the generation prompt)."""
        return self._encode_on_host(messages).to(self.device)

    def _encode_on_host(self, messages: list[Message]) -> BatchFeature:
        """:meth:`encode` before moving to the device; memoised inside :meth:`reusing_encodings`."""
        memo = self._encodings
        if memo is not None and (hit := memo.get(id(messages))) is not None and hit[0] is messages:
            return BatchFeature(dict(hit[1]))
        prompt, images = self._render(messages)
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt")
        if memo is not None:  # kept on the host: K frames of pixel values are ~150 MB at K = 32
            memo[id(messages)] = (messages, inputs)
        return inputs

    @contextmanager
    def reusing_encodings(self) -> Iterator[None]:
        """Inside the block, each chat *object* is preprocessed (rendered, resized, patched) once, by identity.

        Stage 2 generates from a chat and then scores the same chat once or more (the update, old and reference
        log-probabilities): preprocessing K frames costs about 0.34 s a chat at K = 32 on a CPU core. The chats
        must not be changed inside the block; the encodings are dropped when the outermost block ends.
        """
        outermost = self._encodings is None
        if outermost:
            self._encodings = {}
        try:
            yield
        finally:
            if outermost:
                self._encodings = None

    def encode_batch(self, chats: Sequence[list[Message]]) -> BatchFeature:
        """Inputs of several chats in one batch, left-padded (as generation needs), images in chat order.

        Built from each chat's own :meth:`encode` inputs (so :meth:`reusing_encodings` serves them): per-token
        tensors ``[1, L]`` are left-padded (the pad token, mask 0, token type 0) and stacked, per-image tensors
        concatenated in chat order — what the processor's own batching produces for per-sample processors such as
        Qwen2-VL's (tested against it).
        """
        encodings = [self._encode_on_host(messages) for messages in chats]
        if len(encodings) == 1:
            return encodings[0].to(self.device)
        lengths = [encoding["input_ids"].shape[1] for encoding in encodings]
        width = max(lengths)
        per_token = _per_token_keys(encodings)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._padding_token_id()
        batch: dict[str, torch.Tensor] = {}
        for key in sorted(per_token):
            rows = []
            for encoding, length in zip(encodings, lengths, strict=True):
                row = encoding.get(key)
                if row is None:  # a key only some chats have (e.g. token types): 0 = text
                    row = torch.zeros((1, length), dtype=torch.long)
                fill = pad_id if key == "input_ids" else 0
                rows.append(torch.cat([torch.full((width - length,), fill, dtype=row.dtype), row[0]]))
            batch[key] = torch.stack(rows)
        for key in sorted({key for encoding in encodings for key in encoding} - per_token):
            batch[key] = torch.cat([encoding[key] for encoding in encodings if key in encoding])
        return BatchFeature(batch).to(self.device)

    def _render(self, messages: list[Message]) -> tuple[str, list[np.ndarray]]:
        """The chat-template prompt of ``messages`` and their images, resized to their pixel budgets."""
        chat, images = [], []
        for message in messages:
            parts = []
            for part in message.content:
                if isinstance(part, str):
                    parts.append({"type": "text", "text": part})
                elif isinstance(part, ImagePart):
                    parts.append({"type": "image"})  # the template writes the image placeholder here
                    images.append(part.resized(self.image_multiple))
                else:
                    raise TypeError(f"message parts must be str or ImagePart, got {type(part).__name__}")
            chat.append({"role": message.role, "content": parts})
        prompt = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return prompt, images

    def num_image_tokens(self, messages: list[Message]) -> int:
        """How many positions the images of ``messages`` occupy in the model's input."""
        image_token_id = getattr(self.processor, "image_token_id", None)
        if image_token_id is None:
            image_token_id = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        return int((self.encode(messages)["input_ids"] == image_token_id).sum())

    def completion_token_ids(self, completion: str, add_end_token: bool = False) -> list[int]:
        """Token ids of an assistant reply as :meth:`token_logprobs` scores them.

        ``add_end_token`` appends the end-of-turn token (``<|im_end|>`` for Qwen), so that stopping is scored too.
        """
        ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        if add_end_token:
            ids = [*ids, self.tokenizer.eos_token_id]
        return ids

    # --- generation -----------------------------------------------------------------------------------------
    def complete(self, messages: list[Message], generation: GenerationConfig | None = None) -> Completion:
        """Generate a reply and return its text and token ids.

        The model's image/video placeholder tokens (:attr:`placeholder_token_ids`) are never generated.
        """
        generation = generation or GenerationConfig()
        inputs = self.encode(messages)
        sampling = generation.temperature > 0
        with torch.inference_mode(), self._rng(generation.seed if sampling else None):
            output = self.model.generate(**inputs, generation_config=self._hf_generation(generation))
        prompt_tokens = inputs["input_ids"].shape[1]
        new_ids = output[0, prompt_tokens:].tolist()
        return Completion(
            text=self.tokenizer.decode(new_ids, skip_special_tokens=True),
            token_ids=new_ids,
            prompt_tokens=prompt_tokens,
        )

    def complete_batch(
        self, chats: Sequence[list[Message]], generation: GenerationConfig | None = None, *, samples_per_chat: int = 1
    ) -> list[Completion]:
        """Replies to several chats in one batched ``generate`` call (left-padded), ``samples_per_chat`` each.

        Returns ``len(chats) * samples_per_chat`` completions, the samples of a chat next to each other. Much faster
        than one :meth:`complete` per chat on a GPU (a group of GRPO rollouts at once). The ``seed`` seeds the
        whole batch: a reply depends on the other chats of its batch, unlike :meth:`chat_many`'s contract. Each
        reply's ``token_ids`` end at its first end token (the padding after it is dropped).
        """
        if samples_per_chat < 1:
            raise ValueError(f"samples_per_chat must be >= 1, got {samples_per_chat}")
        if not chats:
            return []
        generation = generation or GenerationConfig()
        inputs = self.encode_batch(chats)
        sampling = generation.temperature > 0
        hf_config = self._hf_generation(generation, num_return_sequences=samples_per_chat)
        with torch.inference_mode(), self._rng(generation.seed if sampling else None):
            output = self.model.generate(**inputs, generation_config=hf_config)
        eos = hf_config.eos_token_id
        end_ids = set(eos) if isinstance(eos, list) else {eos}
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        prompt_tokens = [int(n) for n in mask.sum(dim=1).tolist()]  # left padding excluded
        completions = []
        for index, row in enumerate(output[:, inputs["input_ids"].shape[1] :].tolist()):
            end = next((i + 1 for i, token in enumerate(row) if token in end_ids), len(row))
            ids = row[:end]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(Completion(text, ids, prompt_tokens[index // samples_per_chat]))
        return completions

    def _hf_generation(self, generation: GenerationConfig, num_return_sequences: int = 1) -> HFGenerationConfig:
        """transformers' settings for ``generation``: ours alone (see the class notes), placeholders suppressed."""
        sampling = generation.temperature > 0
        return HFGenerationConfig(
            max_new_tokens=generation.max_new_tokens,
            do_sample=sampling,
            temperature=generation.temperature if sampling else None,
            top_p=generation.top_p if sampling else None,
            top_k=None,
            num_return_sequences=num_return_sequences,
            suppress_tokens=sorted(self.placeholder_token_ids) or None,
            eos_token_id=self.model.generation_config.eos_token_id,
            pad_token_id=self.model.generation_config.pad_token_id,
        )

    def chat(self, messages: list[Message], generation: GenerationConfig | None = None) -> str:
        return self.complete(messages, generation).text

    @contextmanager
    def _rng(self, seed: int | None) -> Iterator[None]:
        """Seed torch for one call without disturbing the caller's random state."""
        if seed is None:
            yield
            return
        cuda_devices = sorted({p.device.index or 0 for p in self.model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            yield

    # --- scoring --------------------------------------------------------------------------------------------
    def token_logprobs(
        self,
        messages: list[Message],
        completion: str | Sequence[int],
        temperature: float = 1.0,
        *,
        model: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """Log-probabilities ``[N]`` (float32) of the completion's tokens given the chat, in one forward pass.

        ``completion`` is reply text (scored as :meth:`completion_token_ids` tokenises it) or the exact token
        ids, e.g. ``Completion.token_ids`` from :meth:`complete`. ``temperature`` divides the logits first, as
        the sampler did (GRPO ratios must use the sampling distribution). The result carries gradients when
        autograd is on (the default outside ``torch.no_grad()``); wrap calls in ``torch.no_grad()`` when only
        the values are needed.

        ``model`` runs the forward pass instead of :attr:`model`: a wrapper around the same weights, such as a
        ``peft`` model or the ``DistributedDataParallel`` module ``accelerate`` prepared (its forward is what
        synchronises gradients). It must take the keyword inputs of :attr:`model` and return ``.logits``.
        Several completions are faster scored together by :meth:`token_logprobs_batch`.
        """
        return self.token_logprobs_batch([messages], [completion], temperature, model=model)[0]

    def token_logprobs_batch(
        self,
        chats: Sequence[list[Message]],
        completions: Sequence[str | Sequence[int]],
        temperature: float = 1.0,
        *,
        model: torch.nn.Module | None = None,
    ) -> list[torch.Tensor]:
        """Log-probabilities of several completions, each given its chat, in one batched forward pass.

        Returns one ``[N_i]`` float32 tensor per completion: what :meth:`token_logprobs` gives for
        ``(chats[i], completions[i])``, up to float rounding (batched kernels). Each row is its prompt followed
        by its completion, right-padded, so every real token keeps the positions and the context it has alone
        (the model must be causal over the text, as chat models are).

        Chats are deduplicated by identity: pass the *same* list object for completions of the same prompt (the
        G replies of a GRPO group) and that prompt is rendered and preprocessed once, and, on models that accept
        precomputed image features (transformers' ``mm_encoder_outputs``: Qwen2/2.5-VL, LLaVA, ...; see
        :meth:`_shared_image_features`), its images go through the vision tower once, their features reused by
        every row (gradients sum over the rows, as with separate passes).

        Memory: the forward keeps logits for ``rows x (longest row - shortest prompt + 1)`` positions, so batch
        completions whose prompts have similar lengths (one turn of one group). ``temperature`` and ``model`` are
        as in :meth:`token_logprobs`.
        """
        if len(chats) != len(completions):
            raise ValueError(
                f"token_logprobs_batch needs one chat per completion, got {len(chats)} chats for "
                f"{len(completions)} completions"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive to define probabilities, got {temperature}")
        if not completions:
            return []
        completion_ids = [self._scorable_ids(completion) for completion in completions]

        # Each distinct chat (by identity) is rendered, preprocessed and, where possible, seen by the vision tower
        # once.
        chat_index: dict[int, int] = {}
        distinct: list[list[Message]] = []
        row_chats = []
        for messages in chats:
            if id(messages) not in chat_index:
                chat_index[id(messages)] = len(distinct)
                distinct.append(messages)
            row_chats.append(chat_index[id(messages)])
        encodings = [self.encode(messages) for messages in distinct]
        prompt_lengths = [encoding["input_ids"].shape[1] for encoding in encodings]
        row_lengths = [prompt_lengths[c] + len(ids) for c, ids in zip(row_chats, completion_ids, strict=True)]
        width = max(row_lengths)
        pad_id = self._padding_token_id()

        # Per-token inputs (shape [1, prompt length]): the prompt, then the completion (token type 0 = text), then
        # right padding. The attention mask stays 1 over the padding: in a causal model no real token attends to a
        # later position, so visible padding changes nothing before it, and an all-ones mask lets attention keep its
        # causal fast path (a padding mask makes sdpa visit every block: about twice the attention work here).
        # Anything else (pixel values, image grids) is per image: rows in order.
        per_token = _per_token_keys(encodings)
        inputs: dict[str, object] = {}
        for key in sorted(per_token):
            rows = []
            for c, ids, length in zip(row_chats, completion_ids, row_lengths, strict=True):
                prompt = encodings[c].get(key)
                if prompt is None:  # a key only some chats have (e.g. token types): 0 = text
                    prompt = torch.zeros((1, prompt_lengths[c]), dtype=torch.long, device=self.device)
                if key == "input_ids":
                    completion_part = torch.tensor(ids, dtype=prompt.dtype, device=self.device)
                else:
                    fill = int(key == "attention_mask")
                    completion_part = torch.full((len(ids),), fill, dtype=prompt.dtype, device=self.device)
                fill = pad_id if key == "input_ids" else int(key == "attention_mask")
                padding = torch.full((width - length,), fill, dtype=prompt.dtype, device=self.device)
                rows.append(torch.cat([prompt[0], completion_part, padding]))
            inputs[key] = torch.stack(rows)
        for key in sorted({key for encoding in encodings for key in encoding} - per_token):
            inputs[key] = torch.cat([encodings[c][key] for c in row_chats if key in encodings[c]])
        forward = self.model if model is None else model
        if len(distinct) < len(chats):
            features = self._shared_image_features(forward, distinct, encodings, row_chats)
            if features is not None:
                inputs.pop("pixel_values")
                inputs["mm_encoder_outputs"] = {"image": features}

        # Logits only from the first position that predicts a completion token on: avoids [sequence, vocabulary]
        # logits over long prompts.
        first = min(prompt_lengths[c] for c in row_chats) - 1
        logits = forward(**inputs, use_cache=False, logits_to_keep=width - first).logits
        results = []
        for row, (c, ids) in enumerate(zip(row_chats, completion_ids, strict=True)):
            start = prompt_lengths[c] - 1 - first
            row_logits = logits[row, start : start + len(ids)]
            logprobs = torch.log_softmax(row_logits.float() / temperature, dim=-1)
            targets = torch.tensor(ids, dtype=torch.long, device=logprobs.device)
            results.append(logprobs.gather(-1, targets[:, None]).squeeze(-1))
        return results

    def option_probabilities(self, messages: list[Message], letters: Sequence[str]) -> OptionScores:
        """The first reply token's distribution over ``letters``, from the logits after the generation prompt.

        Each letter must be one token of the tokenizer (``"A"`` ... are, for every chat model we know). The
        result is renormalised over the letters; :attr:`OptionScores.letter_mass` keeps what they held before.
        """
        return self.option_probabilities_many([messages], [letters])[0]

    def option_probabilities_many(
        self, chats: Sequence[list[Message]], letters: Sequence[Sequence[str]]
    ) -> list[OptionScores]:
        """:meth:`option_probabilities` of several chats in one left-padded forward pass (:meth:`encode_batch`).

        Equal to scoring each chat alone up to float rounding (batched kernels; tested). Memory is that of one
        prefill of the whole batch: pass a step's answers in groups that fit.
        """
        if len(chats) != len(letters):
            raise ValueError(f"one letter list per chat is needed, got {len(letters)} for {len(chats)} chats")
        token_ids = [self._letter_token_ids(chat_letters) for chat_letters in letters]
        if not chats:
            return []
        with torch.inference_mode():
            logits = self.model(**self.encode_batch(chats), use_cache=False, logits_to_keep=1).logits[:, -1]
            distributions = torch.softmax(logits.float(), dim=-1).cpu()
        scores = []
        for distribution, chat_letters, ids in zip(distributions, letters, token_ids, strict=True):
            raw = distribution[ids]
            mass = float(raw.sum())
            normalised = raw / mass if mass > 0 else torch.full_like(raw, 1.0 / len(ids))
            scores.append(OptionScores(dict(zip(chat_letters, normalised.tolist(), strict=True)), mass))
        return scores

    def _letter_token_ids(self, letters: Sequence[str]) -> list[int]:
        """The single token of each option letter (an error names a letter that is not one token)."""
        if not letters or len(set(letters)) != len(letters):
            raise ValueError(f"letters must be distinct and non-empty, got {list(letters)!r}")
        token_ids = []
        for letter in letters:
            ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"option letter {letter!r} is {len(ids)} tokens for this tokenizer; expected one")
            token_ids.append(ids[0])
        return token_ids

    def _scorable_ids(self, completion: str | Sequence[int]) -> list[int]:
        ids = self.completion_token_ids(completion) if isinstance(completion, str) else list(completion)
        if not ids:
            raise ValueError("token_logprobs needs a non-empty completion")
        placeholders = sorted(self.placeholder_token_ids.intersection(ids))
        if placeholders:
            raise ValueError(
                f"the completion contains image/video placeholder token(s) {placeholders}, which cannot be scored "
                "as text (complete() never generates them)"
            )
        return ids

    def _padding_token_id(self) -> int:
        """A token id for right padding (masked out; never an image placeholder, which the model would count)."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if isinstance(candidate, int) and candidate not in self.placeholder_token_ids:
                return candidate
        return next(i for i in range(len(self.tokenizer)) if i not in self.placeholder_token_ids)

    def _shared_image_features(
        self,
        forward: torch.nn.Module,
        chats: list[list[Message]],
        encodings: list[BatchFeature],
        row_chats: list[int],
    ) -> BaseModelOutputWithPooling | None:
        """The images of every row from one vision pass over the distinct chats, or None where unsupported.

        transformers' VLMs take precomputed image features as ``mm_encoder_outputs={"image": ...}`` whose
        ``pooler_output`` holds one tensor per image, in input order; ``get_image_features`` computes them. The
        features are computed on the model under ``forward`` (DDP and ``peft`` wrappers removed; a ``peft``
        model shares its weights and active adapter with its base), with gradients when autograd is on.
        """
        base = forward
        while isinstance(base, torch.nn.parallel.DistributedDataParallel):
            base = base.module
        if callable(getattr(base, "get_base_model", None)):
            base = base.get_base_model()
        get_features = getattr(base, "get_image_features", None)
        if not callable(get_features) or "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
            return None
        with_images = [c for c, encoding in enumerate(encodings) if "pixel_values" in encoding]
        if not with_images:
            return None
        accepted = inspect.signature(get_features).parameters
        image_inputs = {
            key: torch.cat([encodings[c][key] for c in with_images])
            for key in encodings[with_images[0]]
            if key in accepted and all(key in encodings[c] for c in with_images)
        }
        per_image = get_features(**image_inputs, return_dict=True).pooler_output
        counts = [sum(isinstance(part, ImagePart) for m in chats[c] for part in m.content) for c in with_images]
        if len(per_image) != sum(counts):
            return None  # not one feature tensor per image: let the forward pass run the vision tower
        of_chat, position = {}, 0
        for c, count in zip(with_images, counts, strict=True):
            of_chat[c] = tuple(per_image[position : position + count])
            position += count
        return BaseModelOutputWithPooling(pooler_output=tuple(f for c in row_chats for f in of_chat.get(c, ())))


def _per_token_keys(encodings: Sequence[BatchFeature]) -> set[str]:
    """Keys of the inputs that hold one value per token (``[1, prompt length]``: ids, masks, token types); the
    others (pixel values, image grids) hold one row per image or patch."""
    return {
        key
        for encoding in encodings
        for key, value in encoding.items()
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (1, encoding["input_ids"].shape[1])
    }
