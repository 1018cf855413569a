"""The fields of a tensor's ggml quant blocks, each as its own numpy array (for writers that store
a GGUF tensor in another format's quant form, e.g. ONNX's).

``field(rows, qtype, name)`` reads rows of a tensor as the file holds them (uint8
[R, row_bytes], ``qtype`` a ggml type name; layouts: ``gdnc.lowering.quant.blocks``) and returns
field ``name`` of every block, its values in element order along the row: [R, n] where n is the
number of that field per row. The fields (``FIELDS``):

==========  ===============================================  ======================  =========
qtype       value of element e of a block                    field: dtype            per block
==========  ===============================================  ======================  =========
Q8_0        ``d * codes``                                    d: float16, codes: int8   1, 32
Q4_0        ``d * (codes - 8)``                              d: float16, codes: uint8  1, 32
Q4_K, Q5_K  ``(d * sc[e // 32]) * codes - dmin * m[e // 32]``  d, dmin: float16;      1, 1;
                                                             sc, m: uint8 (6 bits);  8, 8;
                                                             codes: uint8 (4/5 bits)  256
Q6_K        ``(d * sc[e // 16]) * codes``                    d: float16, sc: int8,   1, 16,
                                                             codes: int8 (-32..31)    256
==========  ===============================================  ======================  =========

Those are ``gguf.quants.dequantize``'s formulas, term for term. Nothing is converted: every
field holds the file's bits (the float16 fields are the file's bytes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Fields = dict[str, Callable[[np.ndarray], np.ndarray]]


def _f16(at: int) -> Callable[[np.ndarray], np.ndarray]:
    """The float16 field at byte ``at`` of blocks uint8 [..., B] -> [..., 1]."""
    return lambda b: np.ascontiguousarray(b[..., at:at + 2]).view(np.float16)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [..., n] -> [..., 2, n]: the low nibbles, then the high ones."""
    return np.stack((packed & 15, packed >> 4), axis=-2)


def _q4_0_codes(b: np.ndarray) -> np.ndarray:
    """Byte j of ``qs`` holds element j (low nibble) and j + 16 (high)."""
    return _nibbles(b[..., 2:]).reshape(*b.shape[:-1], 32)


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit sub-block scales and mins of Q4_K/Q5_K blocks (bytes 4..15): [..., 8] each.
    Bytes 0..3 of the 12 hold scales 0..3 (low 6 bits), 4..7 mins 0..3; bytes 8..11 the low 4
    bits of scales 4..7 (low nibble) and mins 4..7 (high nibble), whose top 2 bits are the top
    bits of bytes 0..7."""
    d, m, both = b[..., 4:8], b[..., 8:12], b[..., 12:16]
    sc = np.concatenate([d & 63, (both & 15) | ((d >> 2) & 48)], axis=-1)
    mn = np.concatenate([m & 63, (both >> 4) | ((m >> 2) & 48)], axis=-1)
    return sc, mn


def _k_low(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K ``qs`` [..., 128] -> the low 4 bits [..., 8, 32]: group g of 32 bytes holds
    sub-block 2g in its low nibbles and 2g + 1 in its high ones."""
    return _nibbles(qs.reshape(*qs.shape[:-1], 4, 32)).reshape(*qs.shape[:-1], 8, 32)


def _q4_k_codes(b: np.ndarray) -> np.ndarray:
    return _k_low(b[..., 16:144]).reshape(*b.shape[:-1], 256)


def _q5_k_codes(b: np.ndarray) -> np.ndarray:
    """Bit j of ``qh[i]`` (bytes 16..47) is bit 4 of element i of sub-block j."""
    qh = b[..., 16:48, None] >> np.arange(8, dtype=np.uint8)  # [..., 32 (i), 8 (j)]
    high = np.swapaxes(qh & 1, -1, -2) << 4  # [..., 8, 32]
    return (_k_low(b[..., 48:176]) | high).reshape(*b.shape[:-1], 256)


def _q6_k_codes(b: np.ndarray) -> np.ndarray:
    """Per half of 128 elements, element ``32 s + i``: the low 4 bits from ``ql`` byte
    ``i + 32 (s % 2)`` of the half (nibble ``s // 2``), bits 4..5 from bits ``2 s`` of ``qh``
    byte i; the code is that minus 32."""
    lead = b.shape[:-1]
    low = _nibbles(b[..., :128].reshape(*lead, 2, 64)).reshape(*lead, 2, 4, 32)
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]
    q = low | ((qh & 3) << 4)
    return (q.astype(np.int8) - np.int8(32)).reshape(*lead, 256)


FIELDS: dict[str, Fields] = {
    "Q8_0": {"d": _f16(0), "codes": lambda b: b[..., 2:].view(np.int8)},
    "Q4_0": {"d": _f16(0), "codes": _q4_0_codes},
    "Q4_K": {"d": _f16(0), "dmin": _f16(2), "sc": lambda b: _k_scales(b)[0],
             "m": lambda b: _k_scales(b)[1], "codes": _q4_k_codes},
    "Q5_K": {"d": _f16(0), "dmin": _f16(2), "sc": lambda b: _k_scales(b)[0],
             "m": lambda b: _k_scales(b)[1], "codes": _q5_k_codes},
    "Q6_K": {"d": _f16(208), "sc": lambda b: b[..., 192:208].view(np.int8), "codes": _q6_k_codes},
}


def field(rows: np.ndarray, qtype: str, name: str) -> np.ndarray:
    """Field ``name`` of every block of ``rows`` (uint8 [R, row_bytes] of ``qtype``): [R, n], a
    new array (contract: module docstring). KeyError for a type or field not in ``FIELDS``."""
    read = FIELDS[qtype][name]
    nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    blocks = rows.reshape(rows.shape[0], -1, nbytes)
    out = read(blocks)
    return np.ascontiguousarray(out).reshape(rows.shape[0], -1)
