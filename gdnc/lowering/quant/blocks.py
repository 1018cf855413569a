"""GGML block layouts and their dequantization with plain torch ops (the same code on CPU or CUDA).

A row of ``cols`` elements is stored as ``cols / block`` consecutive blocks, in ggml's layouts
(``ggml-common.h``; little-endian, fp16 scales):

- ``Q8_0``, 34 B per 32: fp16 ``d``, int8 ``q[32]``; value ``q * d``.
- ``Q4_0``, 18 B per 32: fp16 ``d``, ``qs[16]``; the low nibbles are elements 0..15, the high
  ones 16..31; value ``d * (q - 8)``.
- ``Q4_K``, 144 B per 256: fp16 ``d``, fp16 ``dmin``, ``scales[12]`` (eight 6-bit scales and
  eight 6-bit mins, packed), ``qs[128]``: four groups of 32 bytes, group j holding sub-block 2j
  in its low nibbles and 2j+1 in its high ones; value ``(d * sc) * q - (dmin * m)``.
- ``Q5_K``, 176 B per 256: as Q4_K with ``qh[32]`` before ``qs``: bit j of ``qh[i]`` is bit 4
  of element i of sub-block j.
- ``Q6_K``, 210 B per 256: ``ql[128]`` (two halves of 64 bytes: low nibbles are elements
  0..63 of the half, high nibbles 64..127), ``qh[64]`` (two halves of 32 bytes: bits 2s..2s+1
  of byte i are bits 4..5 of element 32s + i of the half), int8 ``scales[16]`` (one per 16
  elements), fp16 ``d`` last; value ``(d * scale) * (q - 32)``.
- ``F32``, ``F16``, ``BF16``: the values themselves.

Every product is one IEEE fp32 operation in ggml's order (the scale products first), so the
results are bit-identical to ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from gdnc.errors import ModelLoadError, ShapeError

SUPPORTED: frozenset[str] = frozenset({"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"})
_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def block_layout(qtype: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of ``qtype``, a ggml type name in ``SUPPORTED``."""
    if qtype not in SUPPORTED:
        raise ModelLoadError(f"weights of type {qtype} are not supported (supported: "
                             f"{', '.join(sorted(SUPPORTED))})")
    elements, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return int(elements), int(nbytes)


def row_bytes(qtype: str, cols: int) -> int:
    """Bytes of one row of ``cols`` elements of type ``qtype``."""
    elements, nbytes = block_layout(qtype)
    if cols % elements:
        raise ModelLoadError(f"a {qtype} row holds a multiple of {elements} elements, not {cols}")
    return cols // elements * nbytes


def dequantize(raw: torch.Tensor, qtype: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """The values of ``raw``: uint8 [..., row_bytes] (any view, any device) -> float32
    [..., cols] on the same device, never a view of ``raw``: written into ``out`` when given
    (contiguous float32 of that many elements, e.g. a scratch buffer reused across chunks,
    which spares a fresh allocation's page faults) and returned viewed as [..., cols]."""
    elements, nbytes = block_layout(qtype)
    if raw.dtype != torch.uint8 or raw.dim() == 0 or raw.shape[-1] % nbytes:
        raise ShapeError(f"{qtype} bytes must be uint8 [..., a multiple of {nbytes}], "
                         f"got {raw.dtype} {list(raw.shape)}")
    n_blocks = raw.shape[-1] // nbytes
    shape = (*raw.shape[:-1], n_blocks * elements)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=raw.device)
    elif (out.dtype != torch.float32 or not out.is_contiguous() or out.device != raw.device
          or out.numel() != math.prod(shape)):
        raise ShapeError(f"dequantize: out must be contiguous float32 of {math.prod(shape)} "
                         f"elements on {raw.device}, got {out.dtype} {list(out.shape)}")
    values = out.view(shape)
    if qtype in _FLOATS:
        values.copy_(_as(raw, _FLOATS[qtype]))
    else:
        _BLOCKS[qtype](raw.unflatten(-1, (n_blocks, nbytes)), values.unflatten(-1, (n_blocks, elements)))
    return values


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [..., n * itemsize] reinterpreted as ``dtype`` [..., n]: a view of ``t`` where its
    strides and offset allow one, else of a contiguous copy."""
    size = dtype.itemsize
    viewable = (t.stride(-1) == 1 and t.storage_offset() % size == 0
                and all(s % size == 0 for s in t.stride()[:-1]))
    return (t if viewable else t.clone(memory_format=torch.contiguous_format)).view(dtype)


def _f16(blocks: torch.Tensor, at: int, count: int = 1) -> torch.Tensor:
    """``count`` consecutive fp16 fields from byte ``at`` of each block: uint8 [..., nb, B] ->
    float32 [..., nb, count]."""
    return _as(blocks[..., at:at + 2 * count], torch.float16).float()


def _shifts(*bits: int, like: torch.Tensor) -> torch.Tensor:
    """uint8 [len(bits), 1] on ``like``'s device: shift counts broadcast over a row of bytes."""
    return torch.tensor(bits, dtype=torch.uint8, device=like.device).unsqueeze(-1)


def _split_nibbles(packed: torch.Tensor, out: torch.Tensor, high: torch.Tensor | None = None) -> None:
    """Writes the low nibbles of ``packed`` (uint8 [..., n]) to ``out[..., 0, :]`` and the high
    ones to ``out[..., 1, :]`` (``out`` float32 [..., 2, n]), each OR-ed with ``high[..., i, :]``
    (uint8 [..., 2, n], the upper bits) when given."""
    low, top = packed & 15, packed >> 4
    if high is not None:
        low, top = low.bitwise_or_(high[..., 0, :]), top.bitwise_or_(high[..., 1, :])
    out[..., 0, :] = low
    out[..., 1, :] = top


def _k_scale_min(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d * sc, dmin * m)`` of Q4_K/Q5_K blocks uint8 [..., nb, B]: float32 [..., nb, 8, 1] each.
    Bytes 4..7 hold scales 0..3 (low 6 bits), 8..11 mins 0..3; bytes 12..15 the low 4 bits of
    scales 4..7 (low nibble) and mins 4..7 (high nibble), whose top 2 bits are the top bits of
    bytes 4..11."""
    first, rest = blocks[..., 4:12], blocks[..., 12:16]
    low = (first & 63).unflatten(-1, (2, 4))
    high = torch.stack((rest & 15, rest >> 4), dim=-2).bitwise_or_(((first >> 2) & 48).unflatten(-1, (2, 4)))
    six_bits = torch.cat((low, high), dim=-1)  # [..., nb, 2, 8]: the scales, the mins
    both = torch.mul(_f16(blocks, 0, 2).unsqueeze(-1), six_bits)
    return both[..., 0, :, None], both[..., 1, :, None]


def _q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """uint8 [..., nb, 34] -> ``out`` float32 [..., nb, 32]."""
    out.copy_(blocks[..., 2:].view(torch.int8))
    out.mul_(_f16(blocks, 0))


def _q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """uint8 [..., nb, 18] -> ``out`` float32 [..., nb, 32]."""
    _split_nibbles(blocks[..., 2:], out.unflatten(-1, (2, 16)))
    out.sub_(8).mul_(_f16(blocks, 0))


def _k_quants(blocks: torch.Tensor, out: torch.Tensor, high: torch.Tensor | None) -> None:
    """``(d * sc) * q - dmin * m`` of Q4_K/Q5_K blocks uint8 [..., nb, B] into ``out`` float32
    [..., nb, 256]; ``high``: Q5_K's bit 4 of each quant (uint8 [..., nb, 4, 2, 32], in place)."""
    _split_nibbles(blocks[..., -128:].unflatten(-1, (4, 32)), out.unflatten(-1, (4, 2, 32)), high)
    scale, minimum = _k_scale_min(blocks)
    out.unflatten(-1, (8, 32)).mul_(scale).sub_(minimum)


def _q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """uint8 [..., nb, 144] -> ``out`` float32 [..., nb, 256]."""
    _k_quants(blocks, out, None)


def _q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """uint8 [..., nb, 176] -> ``out`` float32 [..., nb, 256]."""
    qh = blocks[..., 16:48].unsqueeze(-2)
    high = ((qh >> _shifts(*range(8), like=blocks)) & 1).bitwise_left_shift_(4)
    _k_quants(blocks, out, high.unflatten(-2, (4, 2)))


def _q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """uint8 [..., nb, 210] -> ``out`` float32 [..., nb, 256]: per half of 128 elements, element
    ``64 * n + p`` is nibble n of ``ql`` byte p, its bits 4..5 from ``qh``."""
    qh = blocks[..., 128:192].unflatten(-1, (2, 1, 32))
    high = ((qh >> _shifts(0, 2, 4, 6, like=blocks)) & 3).bitwise_left_shift_(4)
    _split_nibbles(blocks[..., :128].unflatten(-1, (2, 64)), out.unflatten(-1, (2, 2, 64)),
                   high.flatten(-2).unflatten(-1, (2, 64)))
    scale = torch.mul(_f16(blocks, 208), blocks[..., 192:208].view(torch.int8)).unsqueeze(-1)
    out.sub_(32).unflatten(-1, (16, 16)).mul_(scale)


_BLOCKS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}
