"""``x @ W^T`` for a few rows of x, dequantizing W while multiplying: the native kernel of
``linear_rows.c`` (one pass over the weight's bytes, each weight's value exactly ggml's).

This is the decode path: for up to ``MAX_ROWS[qtype]`` rows of x it reads each weight once,
against dequantizing a chunk to float32 and multiplying it (``packed._matmul_chunks``), which
writes and reads every weight again as 4 bytes. ``reason()`` says why it cannot run here (None when it
can); ``packed`` then keeps the torch path.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import torch

from gdnc.errors import GdncWarning, ShapeError
from gdnc.lowering.native import NativeUnavailable, function, library, switched_off
from gdnc.lowering.quant.blocks import row_bytes

SOURCE = Path(__file__).with_name("linear_rows.c")
# x rows up to which the kernel beats dequantize-a-chunk + torch.mm, per type: measured with
# weights [8192, 4096], 2 threads, AVX2 (benchmarks/native_linear.py; RESULTS.md, "Native weight
# kernel"): 7-26x at 1 row; at 64 rows 1.1-1.5x for the block types, 0.7x for F16 (1.2x at 16)
MAX_ROWS = {"F16": 16, "BF16": 16, "Q8_0": 64, "Q4_0": 64, "Q4_K": 64, "Q5_K": 64, "Q6_K": 64}
QTYPES = {name: code for code, name in enumerate(MAX_ROWS)}  # the codes of linear_rows.c
_P, _L = ctypes.c_void_p, ctypes.c_long


@cache
def _kernel() -> Callable[..., int] | str:
    """The C function (of one x and several weights), or why there is none."""
    return function(SOURCE, "gdnc_linear_many", (ctypes.c_int, _P, _P, _P, _P, _L, _P, _L, _L, _P, _P,
                                                 ctypes.c_int, ctypes.c_int))


def reason() -> str | None:
    """Why the native kernel cannot run in this process (None: it can)."""
    kernel = _kernel()
    return kernel if isinstance(kernel, str) else None


def simd() -> bool:
    """Whether the kernel takes its AVX2 path on this CPU (False without the kernel)."""
    kernel = _kernel()
    return not isinstance(kernel, str) and bool(library(SOURCE).gdnc_has_avx2())


def takes(x: torch.Tensor, qtype: str) -> bool:
    """Whether ``linear_rows`` runs x [M, cols] against a ``qtype`` weight (on the CPU, M <=
    MAX_ROWS[qtype], cols a multiple of 32)."""
    if not (0 < x.shape[0] <= MAX_ROWS.get(qtype, 0) and not x.shape[1] % 32
            and x.device.type == "cpu"):
        return False
    kernel = _kernel()
    if isinstance(kernel, str):
        _warn(kernel)
    return not isinstance(kernel, str)


@cache
def _warn(why: str) -> None:
    """A warning, once per process, that the kernel was wanted and is missing (none when the
    user switched the native kernels off)."""
    if not switched_off():
        warnings.warn(f"the native weight kernel is unavailable ({why}); matmuls take the slower "
                      "torch path", GdncWarning, stacklevel=3)


def linear_rows(x: torch.Tensor, raw: torch.Tensor, qtype: str, out: torch.Tensor, *,
                vector: bool = True) -> None:
    """Writes x [M, cols] @ W^T into ``out`` [M, rows]: W's rows are ``raw`` uint8 [rows,
    row_bytes] of ``qtype`` (contiguous), x float32 with unit column stride, out float32 with unit
    column stride, all on the CPU. ``vector=False`` takes the portable path (for tests)."""
    linear_rows_many(x, [raw], [qtype], [out], vector=vector)


def linear_rows_many(x: torch.Tensor, raws: Sequence[torch.Tensor], qtypes: Sequence[str],
                     outs: Sequence[torch.Tensor], *, vector: bool = True) -> None:
    """``linear_rows`` of one x and several weights, in one parallel region over all their rows."""
    cols, m = x.shape[-1], x.shape[0]
    for raw, qtype, out in zip(raws, qtypes, outs):
        if (raw.dtype != torch.uint8 or raw.dim() != 2 or not raw.is_contiguous()
                or out.dtype != torch.float32 or out.shape != (m, raw.shape[0]) or out.stride(1) != 1
                or not raw.device.type == out.device.type == "cpu" or qtype not in QTYPES or cols % 32
                or raw.shape[1] != row_bytes(qtype, cols)):
            raise ShapeError(f"linear_rows: x {x.dtype} {list(x.shape)}, raw {raw.dtype} {list(raw.shape)},"
                             f" out {out.dtype} {list(out.shape)} do not fit the kernel's contract")
    if not len(raws) == len(qtypes) == len(outs) or not raws:
        raise ShapeError(f"linear_rows: {len(raws)} weight(s), {len(qtypes)} type(s), {len(outs)} output(s)")
    Weights(raws, qtypes, cols)(x, outs, vector=vector)


class Weights:
    """Weights of one x, prepared once for the kernel: ``weights(x, outs)`` writes x @ W_s^T into
    outs[s] (x float32 [M, cols] with unit column stride on the CPU; outs float32 [M, rows_s]
    with unit column stride). The raw tensors must stay as they are (they are read, never
    copied: a contiguous uint8 [rows, row_bytes] each)."""

    def __init__(self, raws: Sequence[torch.Tensor], qtypes: Sequence[str], cols: int) -> None:
        kernel = _kernel()
        if isinstance(kernel, str):
            raise NativeUnavailable(kernel)
        n = self.n = len(raws)
        self._kernel, self.cols, self.rows = kernel, cols, [int(r.shape[0]) for r in raws]
        self._raws = list(raws)  # kept alive: the kernel reads their memory
        self._args = ((ctypes.c_int * n)(*(QTYPES[q] for q in qtypes)),
                      (_P * n)(*(r.data_ptr() for r in raws)), (_L * n)(*self.rows),
                      (_L * n)(*(r.shape[1] for r in raws)), cols)
        self.qtypes = tuple(qtypes)

    def __call__(self, x: torch.Tensor, outs: Sequence[torch.Tensor], *, vector: bool = True) -> None:
        m = x.shape[0]
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != self.cols or x.stride(1) != 1 \
                or x.device.type != "cpu" or len(outs) != self.n \
                or any(o.shape != (m, r) or o.stride(1) != 1 or o.dtype != torch.float32
                       for o, r in zip(outs, self.rows)):
            raise ShapeError(f"linear_rows: x {x.dtype} {list(x.shape)} with {len(outs)} output(s) does "
                             f"not fit {self.n} weight(s) of {self.cols} columns")
        n = self.n
        status = self._kernel(n, *self._args, x.data_ptr(), x.stride(0), m,
                              (_P * n)(*(o.data_ptr() for o in outs)), (_L * n)(*(o.stride(0) for o in outs)),
                              torch.get_num_threads(), int(vector))
        if status:
            raise ShapeError(f"linear_rows: the kernel refused {', '.join(self.qtypes)} ({status})")
