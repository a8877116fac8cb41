"""Run configs of ``msjoe train``: documented dataclasses, loadable from YAML.

A run config has four sections, each a dataclass with documented defaults::

    stage: 1                 # or 2
    models:  ModelsConfig    # which MLLM, dual encoder and U-Sampler to start from
    data:    DataConfig      # the training QA file and how candidate frames are made
    trainer: Stage1Config | Stage2Config   # the algorithm's hyper-parameters (msjoe.train.stage1 / msjoe.train.stage2)
    run:     RunConfig       # output folder, checkpoints, logging, resume

Unknown keys and values of the wrong type are errors naming the key's full path (``trainer.learning_rate``), so a
typo never silently falls back to a default. ``load_run_config(path)`` reads a file, ``run_config_from_dict`` a
mapping, ``run_config_to_dict`` writes one back (the run saves it as ``config.yaml`` in its output folder).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from msjoe.checks import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_fields, is_int, is_number
from msjoe.defaults import DEFAULT_CLIP, DEFAULT_MLLM
from msjoe.train.stage1 import Stage1Config
from msjoe.train.stage2 import Stage2Config
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the offending key."""


MLLMDtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class ModelsConfig:
    """The models a run starts from."""

    mllm: str = DEFAULT_MLLM
    """The MLLM (Hugging Face id or local folder): frozen answerer in stage 1, policy in stage 2."""
    mllm_revision: str | None = None
    """Hub branch, tag or commit of ``mllm``."""
    dual_encoder: str = DEFAULT_CLIP
    """The frozen CLIP/SigLIP model that embeds frames and queries (Hugging Face id or local folder)."""
    dual_encoder_revision: str | None = None
    """Hub branch, tag or commit of ``dual_encoder``."""
    dtype: MLLMDtype = "auto"
    """Weights dtype of the MLLM: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``. Full
    fine-tuning in stage 2 needs ``float32`` weights (AdamW keeps no master copy; use ``run.mixed_precision:
    bf16`` for speed); LoRA adapters train in float32 whatever the base's dtype."""
    sampler: str | None = None
    """A U-Sampler folder to start from (``save_pretrained`` layout, e.g. stage 1's output); None: a fresh network
    built from ``sampler_config``."""
    sampler_config: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`msjoe.samplers.usampler.USamplerConfig` for a fresh network (ignored with ``sampler``)."""
    sampler_seed: int = 0
    """Seed of a fresh network's initialisation."""

    def __post_init__(self) -> None:
        from msjoe.samplers.usampler import USamplerConfig

        check_fields(self)  # every field's type (dtype: one of MLLMDtype), from its annotation
        try:  # unknown or invalid fields fail here, before any work
            USamplerConfig.from_dict(self.sampler_config)
        except ValueError as error:
            raise ValueError(f"sampler_config: {error}") from error


@dataclass
class DataConfig:
    """Training data: a QA JSONL (``msjoe.data.schema``) whose items have an answer (and, in stage 1, a
    difficulty) and the candidate frames of their videos."""

    train: str = ""
    """The training QA JSONL file (required)."""
    video_root: str | None = None
    """Folder that relative ``video`` paths in ``train`` are resolved against (default: the file's folder)."""
    cache_dir: str | None = None
    """Feature cache folder (default: msjoe's cache, ``$MSJOE_CACHE`` or ``~/.cache/msjoe``)."""
    fps: Annotated[float, POSITIVE] = DEFAULT_FPS
    """Candidate frames per second of video."""
    max_frames: Annotated[int, AT_LEAST_1] = DEFAULT_MAX_FRAMES
    """Most candidate frames a video gets (uniform over the video beyond that)."""
    queries: Literal["mllm", "question"] = "mllm"
    """Stage 1's queries: ``mllm`` (the frozen MLLM writes them once, greedily, cached) or ``question`` (the
    question text is the single query: cheaper, weaker)."""
    frame_store: bool = False
    """Keep decoded candidate frames as small JPEGs next to the feature cache (faster answers, more disk)."""
    frame_max_pixels: Annotated[int, AT_LEAST_1] = 448 * 448
    """Pixel budget of each key frame shown to the MLLM."""
    limit: Annotated[int | None, AT_LEAST_1] = None
    """Use only the first N items (quick runs)."""

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation


@dataclass
class RunConfig:
    """Where a run writes and how it checkpoints, logs and resumes."""

    output_dir: str = "runs/msjoe"
    """Folder of the run: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``sampler/`` (the final U-Sampler),
    ``config.yaml``, ``skipped.jsonl``, ``bad_batches/``."""
    save_every: Annotated[int, AT_LEAST_0] = 100
    """Write a checkpoint every this many optimiser steps (and at the end); 0: only at the end."""
    keep_last: Annotated[int, AT_LEAST_0] = 3
    """Checkpoints kept (oldest deleted first); 0 keeps all."""
    resume: str = "auto"
    """``auto``: continue from the newest checkpoint in ``output_dir`` if there is one; ``never``: refuse to run
    over an existing checkpoint; or a checkpoint folder to continue from."""
    tensorboard: bool = True
    """Also write TensorBoard event files (``metrics.jsonl`` is always written)."""
    progress: bool = True
    """Draw a progress bar (main process only)."""
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """Autocast of ``accelerate.Accelerator`` (quote ``"no"`` in YAML); None: ``accelerate launch`` /
    ``accelerate config``'s setting, else ``"no"``. Stage 2 refuses ``fp16`` (its two optimisers cannot share one
    loss scaler): use ``bf16``."""

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type and range, from its annotation
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")


@dataclass
class Stage1RunConfig:
    """``msjoe train stage1``: pre-train the U-Sampler with the MLLM frozen."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: Stage1Config = field(default_factory=Stage1Config)
    run: RunConfig = field(default_factory=RunConfig)
    stage: Literal[1] = 1


@dataclass
class Stage2RunConfig:
    """``msjoe train stage2``: joint GRPO (MLLM) and REINFORCE (U-Sampler) training."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: Stage2Config = field(default_factory=Stage2Config)
    run: RunConfig = field(default_factory=RunConfig)
    stage: Literal[2] = 2


STAGE_CONFIGS: dict[int, type] = {1: Stage1RunConfig, 2: Stage2RunConfig}
"""Run config class by stage number."""


def run_config_class(stage: int) -> type:
    """The run config dataclass of ``stage`` (1 or 2)."""
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"stage must be one of {sorted(STAGE_CONFIGS)}, got {stage!r}")
    return STAGE_CONFIGS[stage]


def load_run_config(path: str | Path, *, stage: int | None = None, overrides: list[str] | None = None) -> Any:
    """Read a YAML run config. ``stage`` (from the CLI) must agree with the file's ``stage`` key if it has one.

    ``overrides`` are ``section.key=value`` strings applied on top of the file (values parsed as YAML), e.g.
    ``["trainer.steps=20", "run.output_dir=runs/try"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return run_config_from_dict(data, stage=stage)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``dotted.key=value`` override set (the value parsed as YAML)."""
    result = copy.deepcopy(data)
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"override {override!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML: {error}") from error
        *parents, leaf = key.strip().split(".")
        node = result
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
            node = child
        node[leaf] = value
    return result


def run_config_from_dict(data: dict[str, Any], *, stage: int | None = None) -> Any:
    """Build a run config from a mapping (the parsed YAML)."""
    file_stage = data.get("stage")
    if stage is not None and file_stage is not None and file_stage != stage:
        raise ConfigError(f"the file is a stage-{file_stage} config but stage {stage} was asked for")
    chosen = stage if stage is not None else file_stage
    if chosen is None:
        raise ConfigError("say which stage this config is for: add `stage: 1` or `stage: 2`")
    cls = run_config_class(chosen)
    return _build(cls, {**data, "stage": chosen}, "")


def run_config_to_dict(config: Any) -> dict[str, Any]:
    """A plain mapping (YAML-safe: tuples become lists) of a run config."""
    return _plain(dataclasses.asdict(config))


def dump_run_config(config: Any) -> str:
    """YAML text of a run config, sections in their natural order."""
    return yaml.safe_dump(run_config_to_dict(config), sort_keys=False)


# --- building dataclasses from mappings, with precise errors -------------------------------------------------------
def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; known: {sorted(known)}")
    values = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where or 'config'}: {error}") from error


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, where)  # an empty YAML section means the defaults
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            hint_text = (
                " (YAML reads an unquoted no/yes/off/on as a boolean: quote it)" if isinstance(value, bool) else ""
            )
            raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}{hint_text}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_hint = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        items = [_convert(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if not is_int(value):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML reads "1e-3" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if not is_number(value):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise ConfigError(f"{where} must be a {hint.__name__}, got {value!r}")
        return value
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
