"""Memory a device has free, and a one-line refusal for work that would not fit in it.

CPU: the least of the kernel's estimate of available memory (``MemAvailable``), the room
left under the process's cgroup limit and under its address-space limit (``RLIMIT_AS``);
the physical memory where none of these can be read. CUDA: the device's free memory plus
what torch's caching allocator holds unused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from gdnc.errors import InputError


class MemoryShortError(InputError):
    """Work needs more memory than the device has available (the message says how much)."""


def _meminfo(path: str, key: str) -> int | None:
    """Bytes of ``key`` ("MemAvailable:", "VmSize:") in a /proc file given in kB."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Room under this process's cgroup (v2) memory limit; None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    return int(limit) - int(used) if limit.isdigit() and used.isdigit() else None


def _address_space_room() -> int | None:
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _meminfo("/proc/self/status", "VmSize:")
    return None if size is None else soft - size


def _physical() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62  # unknown: never refuse


def available_bytes(device: torch.device) -> int:
    """Bytes that work on ``device`` may still allocate (module docstring)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    known = [b for b in (_meminfo("/proc/meminfo", "MemAvailable:"), _cgroup_room(),
                         _address_space_room()) if b is not None]
    return max(0, min(known)) if known else _physical()


def size(n: int) -> str:
    """``n`` bytes for a reader: "3.2 GiB", "640 MiB"."""
    if n >= 1 << 30:
        return f"{n / 2**30:.1f} GiB"
    return f"{max(1, round(n / 2**20))} MiB"


def require(parts: Mapping[str, int], device: torch.device, what: str, fix: str) -> None:
    """MemoryShortError unless the bytes of ``parts`` together fit what ``device`` has
    available; the one-line message names ``what``, the bytes needed (per part) and available."""
    need, have = sum(parts.values()), available_bytes(device)
    if need > have:
        detail = ", ".join(f"{name} {size(n)}" for name, n in parts.items() if n)
        raise MemoryShortError(f"{what} needs about {size(need)} ({detail}) but {size(have)} is "
                               f"available on {device}", fix=fix)
