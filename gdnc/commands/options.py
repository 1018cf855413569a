"""Option values several commands parse alike."""

from __future__ import annotations

from gdnc.errors import InputError


def fused_flag(value: str) -> bool:
    """``--fused-gdn``: on, off or auto (auto = on); InputError for anything else."""
    if value not in ("on", "off", "auto"):
        raise InputError(f"--fused-gdn: {value!r} is not on, off or auto")
    return value != "off"
