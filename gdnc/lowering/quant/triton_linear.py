"""``x @ W^T`` on a GPU for a few rows of float32 x and a 16-bit float W (F16, BF16): each
weight read once, in Triton.

The decode path on CUDA. The torch path (``packed._matmul_chunks``) dequantizes W a chunk at a
time to float32 and multiplies it: every weight is read as 2 bytes, written and read again as
4. cuBLAS would take W as it is only with x in 16 bits too (x rounded to 8 or 11 bits). This
kernel reads W's 16-bit rows once, widens them in registers and multiplies them by float32 x
with float32 sums, so it agrees with the other paths to float32 rounding.

Program p computes output columns [p*BLOCK_N, (p+1)*BLOCK_N) of all M <= ``MAX_ROWS`` rows of x,
walking K in ``BLOCK_K`` steps (``blocks``). The module imports Triton: ``packed`` imports it
only where Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 8  # x rows the kernel takes (its [BLOCK_M, BLOCK_N, BLOCK_K] product stays in registers)
DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16}


@triton.jit
def _rows_kernel(x, w, out, M, N, K, stride_om,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        wt = tl.load(w + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K),
                     other=0.0).to(tl.float32)
        xt = tl.load(x + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                     other=0.0)
        acc += tl.sum(xt[:, None, :] * wt[None, :, :], axis=2)
    tl.store(out + rm[:, None] * stride_om + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def takes(x: torch.Tensor, qtype: str) -> bool:
    """Whether ``linear_rows`` runs x [M, cols] against a ``qtype`` weight: CUDA, a 16-bit float
    type, 0 < M <= MAX_ROWS."""
    return x.is_cuda and qtype in DTYPES and 0 < x.shape[0] <= MAX_ROWS


def blocks(block_m: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for ``block_m`` rows of x: 4 rows of W a program (many
    programs for every SM), each step a 512-element (1 KiB) stretch of them, fewer for more rows
    of x (the product stays in registers)."""
    return (4, 512, 4) if block_m <= 2 else (4, 256, 4)


def linear_rows(x: torch.Tensor, raw: torch.Tensor, qtype: str, out: torch.Tensor,
                config: tuple[int, int, int] | None = None) -> None:
    """Writes x [M, K] (float32, contiguous) @ W^T into ``out`` [M, N] (float32, unit column
    stride), W's rows given as ``raw`` uint8 [N, 2K] of ``qtype`` (F16 or BF16), all on one
    device (a GPU, or the CPU under TRITON_INTERPRET=1). ``config``: (BLOCK_N, BLOCK_K,
    num_warps) instead of ``blocks``' (for sweeps)."""
    M, K = x.shape
    w = raw.contiguous().view(DTYPES[qtype])
    N = w.shape[0]
    block_m = triton.next_power_of_2(M)
    block_n, block_k, warps = config or blocks(block_m)
    _rows_kernel[(triton.cdiv(N, block_n),)](x, w, out, M, N, K, out.stride(0), BLOCK_M=block_m,
                                             BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
