"""What msjoe uses when a command, config or call names no model or sampler: defined once here, importable without
torch (the command line reads them to build its options)."""

DEFAULT_MLLM = "Qwen/Qwen2.5-VL-7B-Instruct"
"""The paper's MLLM."""

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""The paper's frozen dual encoder (CLIP ViT-L/14)."""

DEFAULT_SAMPLER = "nms-z"
"""The sampler of ``ask``, ``select``, ``eval``, ``serve`` and the lmms-eval model when none is named."""
