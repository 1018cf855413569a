"""Clocks for ``gdnc bench``: warm-up then the median of timed rounds, the machine's copy
bandwidth, and what the device is.

On CUDA every timed call ends with ``torch.cuda.synchronize()``: times are wall time per call,
host included."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

COPY_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}  # the copied tensor: far above any cache
DEFAULT_LLC = 32 << 20  # last-level cache assumed where the system does not say


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed rounds."""

    median_s: float
    min_s: float


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(fn: Callable[[int], object], rounds: int, warmup: int, sync: Callable[[], None],
               setup: Callable[[int], object] | None = None) -> Timing:
    """``fn(i)`` for i = 0 .. warmup + rounds - 1: the first ``warmup`` calls untimed, then each
    call timed alone, from after ``setup(i)`` (untimed, when given) to ``sync()`` after it."""
    for i in range(warmup):
        if setup is not None:
            setup(i)
        fn(i)
    sync()
    times = []
    for i in range(warmup, warmup + rounds):
        if setup is not None:
            setup(i)
            sync()
        start = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times))


def copy_bandwidth(device: torch.device, rounds: int) -> float:
    """GB/s of a large tensor copy on ``device`` (``COPY_BYTES``), bytes read + written."""
    src = torch.ones(COPY_BYTES[device.type] // 4, device=device)
    dst = torch.empty_like(src)
    timing = time_calls(lambda i: dst.copy_(src), max(rounds, 3), 2, synchronizer(device))
    return 2 * src.nbytes / timing.median_s / 1e9


def cache_bytes(device: torch.device) -> int:
    """The last-level cache: the GPU's L2, else the CPU's L3 as the kernel reports it."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    for index in (3, 2):
        size = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = size.read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return DEFAULT_LLC


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where Linux has one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, object]:
    """What the JSON and the tables name: device kind and name, torch threads, torch version."""
    return {"kind": device.type, "name": device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
