"""Checkpoints that resume a run exactly, written atomically, on one process or many.

A checkpoint is a folder ``<output_dir>/checkpoints/step-00000100/`` holding:

- what ``accelerate.Accelerator.save_state`` writes: every prepared model and optimiser and each process's
  Python / NumPy / torch RNG states;
- ``trainer_state_rank{R}.pt``: each process's trainer state (step count, its own sampling generators, the lr
  scheduler), from ``trainer.state_dict()``;
- for a ``peft`` model, only its adapter (``adapter_<i>/``), not the frozen base weights;
- ``checkpoint.json``: step, number of processes, time — written last, so its presence marks a complete checkpoint.

Atomicity: everything is written to ``.incomplete-step-...`` and renamed once every process has finished, so a
crash leaves either the previous checkpoints or a complete new one (stale ``.incomplete-*`` folders are removed on
the next save). Only the newest ``keep_last`` checkpoints are kept.

Damage after the fact (a file truncated by a full disk, a quota or an interrupted copy) is found before resuming
by :func:`checkpoint_problem`, which reads each file's structure without loading it: a safetensors file must be as
long as its header says, a ``torch.save`` file (optimiser, RNG and trainer states) must be a whole zip archive,
a JSON file must parse, and every process's trainer state must be there. ``resume: auto`` moves a damaged
checkpoint to ``checkpoints/damaged-<time>/`` (kept, never deleted) and resumes from the newest intact one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from msjoe.atomic import apply_umask_to_files, fsync_folder
from msjoe.errors import MsjoeError

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step-"
_INCOMPLETE = ".incomplete-"
_MARKER = "checkpoint.json"
_DAMAGED = "damaged-"


class CheckpointError(MsjoeError):
    """A checkpoint that cannot be resumed from (incomplete, from another world size, unreadable)."""


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.name.startswith(_PREFIX) and (path / _MARKER).is_file()]
    return sorted(found, key=lambda path: path.name)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why the checkpoint ``folder`` cannot be resumed from (naming the file), or ``None`` when it looks intact.

    Cheap: reads headers and zip directories, not the tensors (see the module docs for what is checked). Damage
    that keeps a file's structure (flipped bytes inside a tensor) is not found here.
    """
    folder = Path(folder)
    try:
        info = read_checkpoint_info(folder)
    except CheckpointError as error:
        return str(error)
    for path in sorted(folder.rglob("*")):
        problem = _file_problem(path) if path.is_file() else None
        if problem is not None:
            return f"{path.relative_to(folder)} {problem}"
    processes = info.get("num_processes")
    if not isinstance(processes, int) or processes < 1:
        return f"{_MARKER} gives no number of processes"
    for rank in range(processes):
        if not (folder / _trainer_state_name(rank)).is_file():
            return f"{_trainer_state_name(rank)} is missing"
    return None


def _file_problem(path: Path) -> str | None:
    """What is wrong with one checkpoint file, judged by its format (by suffix; other files are not checked)."""
    try:
        size = path.stat().st_size
        if path.suffix == ".safetensors":
            with path.open("rb") as file:
                header_length = int.from_bytes(file.read(8), "little")
                if size < 8 or 8 + header_length > size:
                    return f"is truncated ({size} bytes, shorter than its own header)"
                header = json.loads(file.read(header_length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
            expected = 8 + header_length + max(ends, default=0)
            if size != expected:
                return f"is truncated ({size} bytes where its header needs {expected})"
        elif path.suffix in (".bin", ".pt", ".pkl"):  # torch.save writes a zip archive, its directory at the end
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except zipfile.BadZipFile:
        return f"is not a whole torch.save file ({size} bytes; truncated?)"
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        return f"is unreadable ({type(error).__name__}: {error})"
    return None


def set_aside_damaged_checkpoint(folder: str | Path) -> Path:
    """Move a damaged checkpoint to ``checkpoints/damaged-<time>/`` (main process only); return its new path."""
    folder = Path(folder)
    aside = folder.parent / f"{_DAMAGED}{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    target = aside / folder.name
    os.replace(folder, target)
    return target


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint that :func:`checkpoint_problem` finds intact (or None), and the newer ones
    found damaged, as ``(where they were moved, what is wrong)``; those are set aside (main process only)."""
    damaged = []
    for folder in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, damaged
        moved = set_aside_damaged_checkpoint(folder)
        logger.warning("checkpoint %s is damaged (%s): moved to %s, not deleted", folder, problem, moved)
        damaged.append((moved, problem))
    return None, damaged


def read_checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint folder (raises :class:`CheckpointError` if it is not one)."""
    marker = Path(folder) / _MARKER
    if not marker.is_file():
        raise CheckpointError(f"{str(folder)!r} is not a complete msjoe checkpoint (no {_MARKER})")
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {marker}: {error}") from error


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    trainer_state: dict[str, Any],
    *,
    keep_last: int = 0,
    exports: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``step``; every process must call this (collective).

    ``trainer_state`` is this process's ``trainer.state_dict()``. ``exports`` maps a sub-folder name to an object
    with ``save_pretrained(folder)`` (e.g. the U-Sampler), written by the main process for use outside training.
    Returns the checkpoint folder.
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    final = root / checkpoint_name(step)
    temporary = root / f"{_INCOMPLETE}{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{_INCOMPLETE}*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    torch.save(trainer_state, temporary / _trainer_state_name(accelerator.process_index))
    if accelerator.is_main_process:
        for name, obj in (exports or {}).items():
            obj.save_pretrained(temporary / name)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        apply_umask_to_files(temporary)  # safetensors writes 0600 whatever the umask
        info = {"step": step, "num_processes": accelerator.num_processes, "saved_at": time.time()}
        (temporary / _MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        replaced = None
        if final.exists():  # the same step saved again: keep the old copy until the new one is in place
            replaced = root / f"{_INCOMPLETE}replaced-{checkpoint_name(step)}"
            os.replace(final, replaced)
        os.replace(temporary, final)
        fsync_folder(root, strict=True)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        if keep_last > 0:  # the oldest go (names sort by step); the checkpoint just written always stays
            existing = list_checkpoints(output_dir)
            for old in [path for path in existing if path != final][: max(0, len(existing) - keep_last)]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint written: %s", final)
    accelerator.wait_for_everyone()
    return final


def set_aside_newer_checkpoints(output_dir: str | Path, resume_from: Path) -> list[Path]:
    """Move the checkpoints newer than ``resume_from`` to ``checkpoints/abandoned-<time>/`` (main process only).

    Resuming from an older checkpoint starts a new branch of the run: the newer checkpoints belong to the old
    branch and must neither be picked by ``resume: auto`` later nor make the pruning delete the new ones.
    """
    newer = [path for path in list_checkpoints(output_dir) if path.name > Path(resume_from).name]
    if newer:
        aside = Path(output_dir) / CHECKPOINT_DIR / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in newer:
            os.replace(path, aside / path.name)
        logger.warning("resuming from %s: moved %d newer checkpoint(s) to %s", resume_from, len(newer), aside)
    return newer


def load_checkpoint(accelerator: Accelerator, folder: str | Path) -> dict[str, Any]:
    """Restore models, optimisers and RNG states from ``folder``; return this process's trainer state."""
    folder = Path(folder)
    info = read_checkpoint_info(folder)
    if info.get("num_processes") != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {info.get('num_processes')} process(es) but this run has "
            f"{accelerator.num_processes}: resume with the same number of processes (each keeps its own RNG state)"
        )
    state_file = folder / _trainer_state_name(accelerator.process_index)
    if not state_file.is_file():
        raise CheckpointError(f"{folder} has no {state_file.name}")
    try:
        accelerator.load_state(str(folder))
        # The file holds tensors, ints and dicts of our own making (generator states, optimiser-free trainer state).
        return torch.load(state_file, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as error:  # damage the structural check cannot see, or files of another model
        raise CheckpointError(
            f"cannot resume from {folder}: {type(error).__name__}: {error}. If the checkpoint is damaged, move it "
            f"out of {folder.parent} (e.g. to {folder.parent / (_DAMAGED + folder.name)}) and rerun: the run "
            "resumes from the newest checkpoint left"
        ) from error


def _trainer_state_name(rank: int) -> str:
    return f"trainer_state_rank{rank}.pt"


def register_peft_hooks(accelerator: Accelerator) -> None:
    """Save and load only the adapter of ``peft`` models in :func:`save_checkpoint` (not the frozen base).

    accelerate names model files by position (``model.safetensors``, ``model_1.safetensors``...), so taking a
    model out of its list shifts the later ones: ``peft`` models must be prepared after every other model.
    """

    def peft_positions(models: list[Any]) -> list[int]:
        positions = [i for i, model in enumerate(models) if _is_peft(accelerator.unwrap_model(model))]
        if positions and positions != list(range(len(models) - len(positions), len(models))):
            raise CheckpointError("prepare peft models after all other models (checkpoint files are positional)")
        return positions

    def save_adapters(models: list[Any], weights: list[Any], output_dir: str) -> None:
        # ``models`` is the accelerator's own list: leave it alone, drop only the full weights from this save.
        for index in reversed(peft_positions(models)):
            accelerator.unwrap_model(models[index]).save_pretrained(
                Path(output_dir) / f"adapter_{index}", is_main_process=accelerator.is_main_process
            )
            if index < len(weights):
                weights.pop(index)

    def load_adapters(models: list[Any], input_dir: str) -> None:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        for index in reversed(peft_positions(models)):
            adapter = Path(input_dir) / f"adapter_{index}"
            if not adapter.is_dir():
                raise CheckpointError(f"{input_dir} has no {adapter.name}/ for the peft model")
            weights = load_peft_weights(str(adapter), device=str(accelerator.device))
            set_peft_model_state_dict(accelerator.unwrap_model(models[index]), weights)
            models.pop(index)  # a copy of the accelerator's list: this model is now loaded

    accelerator.register_save_state_pre_hook(save_adapters)
    accelerator.register_load_state_pre_hook(load_adapters)


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
