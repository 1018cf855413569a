"""Where a decode step's GPU time goes: one sequence of a GGUF file on CUDA, after a 512-token
prompt.

- the GPU time of a replayed step (CUDA graphs; CUDA events around ``forward``, median of 16);
- the same step launched from Python (``GDNC_CUDA_GRAPHS=off``), under torch's profiler: the
  kernels' GPU time per step grouped by kernel name (top 25), and their count.

Against the weight-read bound (the file's tensor bytes a step reads, at the measured copy
bandwidth). Usage: python3 benchmarks/gpu_step_profile.py FILE.gguf [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gdnc.bench.end_to_end import _step_bytes
from gdnc.bench.timing import copy_bandwidth
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry

STEPS = 16


def _prefilled(path: str) -> tuple[HybridModel, object, int]:
    model = HybridModel(path, device="cuda")
    pool = model.new_pool(1, 1024)
    slot = pool.allocate()
    model.forward(pool, [Entry(slot, tuple(range(1, 513)))])
    for _ in range(4):  # warm-up: kernels built, the step's shape captured
        model.forward(pool, [Entry(slot, (7,))])
    torch.cuda.synchronize()
    return model, pool, slot


def _graphed_us(path: str) -> tuple[float, bool]:
    model, pool, slot = _prefilled(path)
    times = []
    for _ in range(STEPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model.forward(pool, [Entry(slot, (7,))])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    graphs = model.fused_executor().graphs
    return statistics.median(times), graphs is not None and graphs.replays > 0


def _kernels(path: str) -> tuple[dict[str, tuple[int, float]], float]:
    """Per kernel name: (launches per step, GPU µs per step); total GPU µs per step."""
    os.environ["GDNC_CUDA_GRAPHS"] = "off"
    model, pool, slot = _prefilled(path)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            model.forward(pool, [Entry(slot, (7,))])
        torch.cuda.synchronize()
    table: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type.name == "CUDA":
            row = table[e.name[:90]]
            row[0] += 1
            row[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    per_step = {name: (int(n) // STEPS, us / STEPS) for name, (n, us) in table.items()}
    return per_step, sum(us for _, us in per_step.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dev = torch.device("cuda")
    bandwidth = copy_bandwidth(dev, 3)
    graphed_us, replayed = _graphed_us(args.model)
    kernels, eager_gpu_us = _kernels(args.model)
    weight_bytes = _step_bytes(HybridModel(args.model, device="cuda"))
    bound_us = weight_bytes / (bandwidth * 1e9 / 2) * 1e6
    print(f"{torch.cuda.get_device_name()}: copy {bandwidth:.0f} GB/s (read + write); weights a step "
          f"{weight_bytes / 2**20:.0f} MiB -> bound {bound_us:.0f} µs/step")
    print(f"replayed step (CUDA graphs {'on' if replayed else 'NOT replayed'}): {graphed_us:.0f} µs "
          f"= {100 * bound_us / graphed_us:.0f}% of the bound")
    launches = sum(n for n, _ in kernels.values())
    print(f"eager step: {launches} kernels, {eager_gpu_us:.0f} µs of GPU time")
    for name, (n, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"  {us:8.1f} µs  {n:4d}x  {name}")
    if args.out:
        args.out.write_text(json.dumps({
            "device": torch.cuda.get_device_name(), "copy_bandwidth_gbps": bandwidth,
            "weight_bytes": weight_bytes, "bound_us": bound_us, "graphed_step_us": graphed_us,
            "replayed": replayed, "eager_kernels_per_step": launches, "eager_gpu_us_per_step": eager_gpu_us,
            "kernels": {k: {"per_step": n, "us": us} for k, (n, us) in kernels.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
