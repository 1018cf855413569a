"""One weight tensor kept as its raw GGML bytes, and the two ops that read it: ``linear`` (x @ W^T)
and ``embed`` (rows of W).

Neither widens the whole weight. On the CPU, ``linear`` of up to ``native_linear.MAX_ROWS``
rows of x (per type) runs the native kernel (each weight read once, dequantized in registers);
otherwise each op dequantizes at most ``CHUNK_ELEMENTS`` elements of the weight at a time (one
row at least) into a scratch buffer kept per thread and device (``linear``) or the preallocated
output (``embed``), and multiplies or keeps that chunk. F32 weights are used in place (viewed as
float32, no copy).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from gdnc.errors import ModelLoadError, ShapeError
from gdnc.lowering.host_values import host_copy
from gdnc.lowering.quant import native_linear
from gdnc.lowering.quant.blocks import dequantize, row_bytes

# weight elements dequantized at a time (an 8 MiB fp32 temporary). Measured on a 2-core AVX2 CPU
# with 2 threads (F16, Q8_0, Q4_K weights [4096, 1536] and [1536, 4096]; x of 1 and 512 rows):
# 2^20..2^22 were close, 2^21 best in most cases; 2^18 and less were up to 3x slower (each chunk
# is ~15 torch ops, and their per-op cost grows when the threads are contended)
CHUNK_ELEMENTS = 1 << 21
F32 = torch.float32
_SCRATCH = threading.local()  # per thread: {device: float32 buffer} (see _scratch)


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A weight of logical shape ``shape`` (numpy order [*lead, rows, cols], float32 values)
    held as ``raw``: uint8 [*lead, rows, row_bytes], each row ggml blocks of ``qtype``. Compared
    by identity (a tensor has no truth value)."""

    raw: torch.Tensor
    qtype: str
    shape: tuple[int, ...]

    @classmethod
    def from_buffer(cls, buffer: np.ndarray, qtype: str, shape: tuple[int, ...]) -> PackedWeight:
        """The weight whose bytes are ``buffer`` (1-D contiguous uint8, typically a read-only view
        of a memory map), without copying them."""
        shape = tuple(int(n) for n in shape)
        if not shape:
            raise ModelLoadError(f"a {qtype} weight needs at least one dimension")
        per_row = row_bytes(qtype, shape[-1])
        expected = math.prod(shape[:-1]) * per_row
        if (buffer.dtype != np.uint8 or buffer.ndim != 1 or not buffer.flags.c_contiguous
                or buffer.size != expected):
            raise ModelLoadError(f"a {qtype} weight of shape {list(shape)} needs {expected} contiguous "
                                 f"bytes, got {buffer.dtype} {list(buffer.shape)}")
        with warnings.catch_warnings():  # read-only memory: no gdnc op writes into a weight
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(buffer)
        return cls(raw.view(*shape[:-1], per_row), qtype, shape)

    def to(self, device: torch.device | str) -> PackedWeight:
        """The same bytes on ``device`` (one copy; none when they are there already)."""
        return PackedWeight(self.raw.to(device), self.qtype, self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of ``raw``."""
        return self.raw.numel()

    @property
    def device(self) -> torch.device:
        """Where ``raw`` lives."""
        return self.raw.device

    def dense(self) -> torch.Tensor:
        """All values: a new float32 tensor of ``shape`` (for small weights)."""
        return dequantize(self.raw, self.qtype)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a 2-D weight: float32 [stop - start, cols]."""
        _need_dims(self, 2)
        if not 0 <= start <= stop <= self.shape[0]:
            raise IndexError(f"rows {start}:{stop} out of range for a weight of {self.shape[0]} rows")
        return dequantize(self.raw[start:stop], self.qtype)


def linear(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """``x @ W^T`` for float32 ``x`` [..., cols]: W [out, cols] gives [..., out]; W [n, out, cols]
    gives [n, T, out] for x [T, cols], [1, T, cols] or [n, T, cols] (ONNX MatMul of x and W
    transposed to [n, cols, out])."""
    _check_linear(x, w)
    if w.qtype == "F32":
        return torch.matmul(x, w.raw.view(F32).transpose(-1, -2))
    if len(w.shape) == 2:
        return _linear_2d(x, w)
    return _linear_3d(x, w)


class LinearGroup:
    """``linear`` of one x and fixed weights ``ws`` (a layer's projections of one input), prepared
    once: ``group(x) == [linear(x, w) for w in ws]``. Where the native kernel takes x with every
    weight (each 2-D, not F32, on the CPU; few rows of x), one call computes them all."""

    def __init__(self, ws: Sequence[PackedWeight]) -> None:
        self.ws = tuple(ws)
        self._native: native_linear.Weights | None = None
        self._max_rows = min((native_linear.MAX_ROWS.get(w.qtype, 0) for w in self.ws), default=0)
        cols = {w.shape[-1] for w in self.ws}
        if (self.ws and len(cols) == 1 and all(len(w.shape) == 2 and w.device.type == "cpu" for w in self.ws)
                and self._max_rows and native_linear.reason() is None):
            self._native = native_linear.Weights([w.raw.contiguous() for w in self.ws],
                                                 [w.qtype for w in self.ws], cols.pop())

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        native = self._native
        if native is None or x.dtype != F32 or x.dim() == 0 or x.shape[-1] != native.cols \
                or x.device.type != "cpu":
            return [linear(x, w) for w in self.ws]
        x2 = x.reshape(-1, native.cols)
        if not 0 < x2.shape[0] <= self._max_rows:
            return [linear(x, w) for w in self.ws]
        outs = [torch.empty((x2.shape[0], rows), dtype=F32) for rows in native.rows]
        native(x2 if x2.stride(1) == 1 else x2.contiguous(), outs)
        return [out.view(*x.shape[:-1], out.shape[1]) for out in outs]


def embed(w: PackedWeight, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (integers of any shape, negative counting from the end) of a 2-D weight:
    float32 [*ids.shape, cols]; an id outside [-rows, rows) raises IndexError."""
    _need_dims(w, 2)
    rows, cols = w.shape
    flat = ids.reshape(-1)
    if flat.numel():
        known = host_copy(flat)  # the caller's host copy: no values read back from a GPU
        values = flat if known is None else known
        low, high = int(values.min()), int(values.max())
        if low < -rows or high >= rows:
            raise IndexError(f"index {high if high >= rows else low} is out of bounds for dimension 0 "
                             f"with size {rows}")
    out = _output((flat.numel(), cols), w.device)
    step = _rows_per_chunk(cols)
    for start in range(0, flat.numel(), step):
        dequantize(w.raw[flat[start:start + step]], w.qtype, out[start:start + step])
    return out.view(*ids.shape, cols)


def _linear_2d(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x [..., cols] @ W^T for a 2-D quantized W [out, cols] -> [..., out]."""
    x2 = x.reshape(-1, w.shape[1])
    out = _output((x2.shape[0], w.shape[0]), x.device)
    _matmul(x2, w.raw, w.qtype, out)
    return out.view(*x.shape[:-1], w.shape[0])


def _linear_3d(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x [T, cols] / [1 or n, T, cols] @ W^T for a 3-D quantized W [n, out, cols] -> [n, T, out]."""
    n, rows, _ = w.shape
    xs = x if x.dim() == 3 else x.unsqueeze(0)
    out = _output((n, xs.shape[1], rows), x.device)
    for i in range(n):
        _matmul(xs[i if xs.shape[0] == n else 0], w.raw[i], w.qtype, out[i])
    return out


def _matmul(x: torch.Tensor, raw: torch.Tensor, qtype: str, out: torch.Tensor) -> None:
    """Writes x [M, cols] @ W^T into ``out`` [M, rows] (unit column stride), W's rows given
    as ``raw`` uint8 [rows, row_bytes] of ``qtype``: by the native kernel, which dequantizes while
    it multiplies, where it takes the call (``native_linear.takes``: CPU, few rows of x), by the
    Triton kernel on a GPU (``triton_linear.takes``: F16/BF16, few rows), else by
    ``_matmul_chunks``."""
    gpu = _triton_linear() if x.is_cuda else None
    if native_linear.takes(x, qtype):
        native_linear.linear_rows(x if x.stride(1) == 1 else x.contiguous(), raw.contiguous(), qtype, out)
    elif gpu is not None and gpu.takes(x, qtype):
        gpu.linear_rows(x.contiguous(), raw, qtype, out)
    else:
        _matmul_chunks(x, raw, qtype, out)


@functools.cache
def _triton_linear() -> ModuleType | None:
    """``triton_linear`` (the GPU decode kernel), None without Triton."""
    if importlib.util.find_spec("triton") is None:
        return None
    from gdnc.lowering.quant import triton_linear

    return triton_linear


def _matmul_chunks(x: torch.Tensor, raw: torch.Tensor, qtype: str, out: torch.Tensor) -> None:
    """``_matmul`` in torch: W dequantized a chunk of rows at a time and multiplied by
    ``torch.mm``."""
    step = min(_rows_per_chunk(x.shape[1]), raw.shape[0])
    scratch = _scratch(step * x.shape[1], x.device)
    for start in range(0, raw.shape[0], step):
        rows = raw[start:start + step]
        chunk = dequantize(rows, qtype, scratch[:rows.shape[0] * x.shape[1]])
        torch.mm(x, chunk.t(), out=out[:, start:start + step])


def _scratch(numel: int, device: torch.device) -> torch.Tensor:
    """A float32 buffer of ``numel`` elements on ``device``, kept for this thread's later calls:
    a fresh 8 MiB buffer per call page-faults again whenever glibc has handed the freed block
    back to the kernel (a fresh fp32 tensor filled from F16 cost 4.5 ns per weight, a kept one
    0.6, on a 2-core AVX2 machine)."""
    kept: dict[torch.device, torch.Tensor] = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = kept.get(device)
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buffer = kept[device] = torch.empty(numel, dtype=F32, device=device)
    return buffer[:numel]


def _rows_per_chunk(cols: int) -> int:
    """Rows of ``cols`` elements dequantized at a time: ``CHUNK_ELEMENTS`` worth, one at least."""
    return max(1, CHUNK_ELEMENTS // cols)


def _output(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The uninitialised float32 result every chunk writes into."""
    return torch.empty(shape, dtype=F32, device=device)


def _check_linear(x: torch.Tensor, w: PackedWeight) -> None:
    """Raises ShapeError unless ``linear`` takes ``x`` with ``w`` (see there)."""
    _need_dims(w, 2, 3)
    cols = w.shape[-1]
    if x.dtype != F32 or x.dim() == 0 or x.shape[-1] != cols:
        raise ShapeError(f"linear: x must be float32 [..., {cols}], got {x.dtype} {list(x.shape)}")
    n = w.shape[0]
    if len(w.shape) == 3 and (x.dim() not in (2, 3) or (x.dim() == 3 and x.shape[0] not in (1, n))):
        raise ShapeError(f"linear: x for a weight of {n} matrices must be [T, {cols}] or "
                         f"[{n}, T, {cols}], got {list(x.shape)}")


def _need_dims(w: PackedWeight, *dims: int) -> None:
    """Raises ShapeError unless ``w`` has one of ``dims`` dimensions."""
    if len(w.shape) not in dims:
        needed = " or ".join(map(str, dims))
        raise ShapeError(f"a {needed}-D weight is needed here, got shape {list(w.shape)}")
