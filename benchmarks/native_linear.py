"""The native weight kernel against dequantize-a-chunk + ``torch.mm`` (``gdnc.lowering.quant``),
side by side, interleaved, on the CPU.

For each type and each M (rows of x): ns per weight of ``native_linear.linear_rows`` and of the
torch path (``packed._matmul_chunks`` with the native kernel switched off), best of ``--repeat``
interleaved rounds, on a weight of ``--shape`` (default [8192, 4096]: 32-64 MiB in F16/Q8_0,
past the last-level cache, so one row of x streams the weight from memory). The native kernel's
bytes per second at M = 1 are also given as a share of the machine's copy bandwidth (a
``torch`` copy of a 256 MiB tensor, bytes read + written).
Usage: ``.venv/bin/python benchmarks/native_linear.py [--types F16,Q8_0] [--rows 1,4,16,64]
[--threads 2] [--json OUT]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/
from corpus.sized_gguf import MatPlan, random_rows  # noqa: E402
from gdnc.lowering.quant import native_linear, packed  # noqa: E402
from gdnc.lowering.quant.blocks import row_bytes  # noqa: E402


def _best(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """The fastest of repeated calls of ``fn`` within about ``seconds`` (after one warm-up)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        fn()
        took = time.perf_counter() - t
        best, spent = min(best, took), spent + took
    return best


def copy_bandwidth() -> float:
    """Bytes per second of a large tensor copy (read + write)."""
    src = torch.empty(64 << 20, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best(lambda: dst.copy_(src), 1.0)


def random_weight(rng: np.random.Generator, qtype: str, rows: int, cols: int) -> torch.Tensor:
    """Random ``qtype`` bytes as ``corpus.sized_gguf`` writes them: uint8 [rows, row_bytes]."""
    chunks = random_rows(MatPlan((rows, cols)), GGMLQuantizationType[qtype], rng)
    data = np.concatenate([np.ascontiguousarray(c).view(np.uint8).reshape(-1) for c in chunks])
    return torch.from_numpy(data.reshape(rows, row_bytes(qtype, cols)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="F16,Q8_0,Q4_K,Q5_K,Q6_K")  # what sized_gguf writes
    ap.add_argument("--rows", default="1,4,16,64")
    ap.add_argument("--shape", default="8192,4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if native_linear.reason() is not None:
        raise SystemExit(f"the native kernel is unavailable: {native_linear.reason()}")
    rows, cols = map(int, args.shape.split(","))
    bandwidth = copy_bandwidth()
    rng = np.random.default_rng(0)
    results = []
    for qtype in args.types.split(","):
        raw = random_weight(rng, qtype, rows, cols)
        for m in map(int, args.rows.split(",")):
            call = (torch.randn(m, cols), raw, qtype, torch.empty(m, rows))
            native, chunks = float("inf"), float("inf")
            for _ in range(args.repeat):  # interleaved rounds
                native = min(native, _best(lambda c=call: native_linear.linear_rows(*c)))
                with torch.inference_mode():
                    chunks = min(chunks, _best(lambda c=call: packed._matmul_chunks(*c)))
            weights = rows * cols
            results.append({"type": qtype, "m": m, "native_ns_per_weight": native / weights * 1e9,
                            "torch_ns_per_weight": chunks / weights * 1e9, "speedup": chunks / native,
                            "native_share_of_copy_bandwidth": raw.numel() / native / bandwidth})
            r = results[-1]
            print(f"{qtype:5s} M={m:3d}  native {r['native_ns_per_weight']:.3f} ns/w  torch "
                  f"{r['torch_ns_per_weight']:.3f} ns/w  {r['speedup']:.1f}x  "
                  f"({100 * r['native_share_of_copy_bandwidth']:.0f}% of copy bandwidth)", flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
               "simd": native_linear.simd(), "copy_bandwidth_gb_s": bandwidth / 1e9,
               "shape": [rows, cols]}
    print("\n| type | M | native ns/weight | torch path ns/weight | speedup | native: % of copy bandwidth |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['type']} | {r['m']} | {r['native_ns_per_weight']:.3f} | {r['torch_ns_per_weight']:.3f} "
              f"| {r['speedup']:.1f}x | {100 * r['native_share_of_copy_bandwidth']:.0f}% |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
