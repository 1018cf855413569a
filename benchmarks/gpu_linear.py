"""The GPU decode weight kernel (``triton_linear``) side by side with the torch path it replaces
(``packed._matmul_chunks``: dequantize a chunk to float32, ``torch.mm``) and with cuBLAS on
16-bit x (``x.half() @ W.T``, the rounding gdnc avoids), at the 0.5B preset's matrix shapes,
M = 1 and 4 rows of x: µs per call (CUDA events around 20 calls, median of 10) and the kernel's
share of the copy bandwidth (weight bytes / time against a device-to-device copy's bytes read +
written / time); and the kernel at each block configuration of ``CONFIGS``.
Usage: python3 benchmarks/gpu_linear.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from gdnc.bench.timing import copy_bandwidth
from gdnc.lowering.quant import packed, triton_linear

SHAPES = [(4096, 1536), (1536, 4096), (16384, 1536), (3072, 1536)]  # [N, K]: ffn up, down, output, qkv


CONFIGS = [(4, 256, 4), (8, 256, 4), (2, 1024, 4), (8, 512, 8), (1, 1024, 4)]  # (BLOCK_N, BLOCK_K, warps)


def _us(fn, reps: int = 10, calls: int = 20) -> float:
    """GPU µs of one call: ``calls`` calls between two events (the queue never runs dry, so no
    launch latency is counted), median of ``reps``."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def _point(qtype: str, dtype: torch.dtype, N: int, K: int, M: int, bandwidth: float) -> dict:
    """The three paths at W [N, K] of ``qtype``, x [M, K]."""
    w = (torch.randn(N, K, device="cuda") * 0.02).to(dtype)
    raw, x, out = w.view(torch.uint8), torch.randn(M, K, device="cuda"), torch.empty(M, N, device="cuda")
    kernel = _us(lambda: triton_linear.linear_rows(x, raw, qtype, out))
    sweep = {c: _us(lambda c=c: triton_linear.linear_rows(x, raw, qtype, out, c)) for c in CONFIGS}
    best = min(sweep, key=sweep.__getitem__)
    chunks = _us(lambda: packed._matmul_chunks(x, raw, qtype, out))
    cublas = _us(lambda: x.to(dtype) @ w.t())
    gbps = 2 * N * K / kernel / 1e3
    share = 100 * gbps / (bandwidth / 2)
    print(f"{qtype} [{N}, {K}] M={M}: kernel {kernel:.1f} µs ({gbps:.0f} GB/s, {share:.0f}% of copy), "
          f"chunks {chunks:.1f}, cuBLAS 16-bit x {cublas:.1f}; best of the sweep {best} {sweep[best]:.1f}",
          flush=True)
    return {"qtype": qtype, "N": N, "K": K, "M": M, "kernel_us": kernel, "chunks_us": chunks,
            "cublas_16bit_x_us": cublas, "kernel_gbps": gbps, "kernel_pct_of_copy": share,
            "sweep_us": {str(c): t for c, t in sweep.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dev = torch.device("cuda")
    bandwidth = copy_bandwidth(dev, 3)  # GB/s, read + written
    rows = []
    for qtype, dtype in (("F16", torch.float16), ("BF16", torch.bfloat16)):
        for N, K in SHAPES:
            for M in (1, 4):
                rows.append(_point(qtype, dtype, N, K, M, bandwidth))
    result = {"device": torch.cuda.get_device_name(), "copy_bandwidth_gbps": bandwidth, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
