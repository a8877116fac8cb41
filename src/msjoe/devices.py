"""Checking a ``--device`` / ``device=`` setting before any model is loaded.

torch accepts ``"cuda"`` on a machine without a GPU until the first tensor moves there, and then fails deep inside
the model loader with a driver message; an unknown name (``"tpu"``) fails with a list of every device type torch
was ever built for. :func:`check_device` turns both into one :class:`DeviceError` that says which devices this
machine has, and is called by every command and loader that takes a device, before the weights load.
"""

from __future__ import annotations

import torch

from msjoe.errors import MsjoeError

__all__ = ["DeviceError", "available_devices", "check_device"]

AUTO = "auto"
"""Not a torch device: the loaders' "the best this machine has" (CUDA when available, else CPU)."""

# Accelerator types with a ``torch.<type>`` module offering is_available() / device_count(). Others (mkldnn,
# meta, ...) are not places to run a model.
_ACCELERATORS = ("cuda", "xpu", "mps")


class DeviceError(MsjoeError, ValueError):
    """A device setting names no device of this machine (unknown type, no such accelerator, index too large)."""


def _accelerator_count(kind: str) -> int:
    """How many devices of ``kind`` (cuda, xpu, mps) torch can use here; 0 when none (or not built in)."""
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    module = getattr(torch, kind, None)
    try:
        return int(module.device_count()) if module is not None and module.is_available() else 0
    except RuntimeError:  # a build whose driver check fails loudly instead of returning False
        return 0


def available_devices() -> list[str]:
    """The devices a model can run on here, in ``--device`` spelling: ``cpu``, then ``cuda:0``, ``cuda:1``, ..."""
    devices = ["cpu"]
    for kind in _ACCELERATORS:
        count = _accelerator_count(kind)
        devices += [kind] if kind == "mps" and count else [f"{kind}:{index}" for index in range(count)]
    return devices


def check_device(device: str | torch.device) -> str:
    """Return ``device`` as a string if this machine has it (``"auto"`` is always accepted), else raise.

    Raises:
        DeviceError: an unknown device name, an accelerator this machine lacks (``cuda`` without a GPU or
            driver), or an index past the last device (``cuda:1`` with one GPU). The message lists the devices
            that exist.
    """
    text = str(device).strip()
    if text == AUTO:
        return text
    here = f"this machine has: {', '.join(available_devices())} (or auto)"
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown device {text!r}; {here}") from None
    if parsed.type == "cpu":
        return text
    if parsed.type not in _ACCELERATORS:
        raise DeviceError(f"device {text!r} is not one msjoe can run models on; {here}")
    count = _accelerator_count(parsed.type)
    if count == 0:
        why = f" (this torch {torch.__version__} finds no {parsed.type.upper()} device or driver)"
        raise DeviceError(f"device {text!r} is not available{why}; {here}")
    if parsed.index is not None and parsed.index >= count:
        raise DeviceError(
            f"device {text!r} does not exist: {count} {parsed.type.upper()} device{'s' * (count != 1)} "
            f"(numbered from 0); {here}"
        )
    return text
