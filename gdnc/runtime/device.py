"""The device a run asks for, checked against this machine."""

from __future__ import annotations

import torch

from gdnc.errors import InputError


def runtime_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device this machine has; InputError otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {name!r} is not a device name",
                         fix="use --device cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: no CUDA device on this machine", fix="use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r}: gdnc runs on cpu or cuda", fix="use --device cpu or cuda")
    return device
