"""How a GGUF tensor is stored in an ONNX file and read back there, per ggml type: the file's
values EXACTLY (bit for bit those of ``gguf.quants.dequantize``), in the smallest form
onnxruntime runs.

A ``Form`` is the initializers it stores (``Part``: a name suffix, an ONNX type and shape, its
values made from the tensor's rows as the file holds them, ``ggml_fields``) and the nodes that
read them: ``dense`` makes the float32 tensor (for any reader; given parts holding gathered
rows, those rows only: blocks run along rows), ``linear`` (4-bit types, 2-D only) computes
``x @ W^T`` with ``com.microsoft::MatMulNBits`` without making W. W is [.., N, K] (numpy
order), b = K / 256:

======  ==============================================  =========================================
type    stored (name suffixes)                          read (DQ: DequantizeLinear, opset 21,
                                                        blocked along the last axis)
======  ==============================================  =========================================
F32     W itself, float32                               as it is
F16     ``.f16`` float16 (BF16: ``.bf16`` bfloat16)     Cast
Q8_0    ``.codes`` int8 [.., N, K], ``.d`` float16      DQ(codes, d, block 32)
        [.., N, K/32]
Q6_K    ``.codes`` int8 (q - 32), ``.sc`` int8          DQ(codes, d*sc, block 16)
        [.., N, K/16], ``.d`` float16 [.., N, b]
Q5_K    ``.codes`` uint8, ``.sc``, ``.m`` uint8         DQ(codes, d*sc, block 32) - dmin*m
        [.., N, K/32], ``.d``, ``.dmin`` float16 [.., N, b]
Q4_0    ``.packed`` uint8 [.., N, K/32, 16] (two codes  dense: (q - 8) * d; linear:
        a byte: element 2i low nibble, 2i+1 high),      MatMulNBits(x, packed, d) (its default
        ``.d`` float16 [.., N, K/32]                    zero point is Q4_0's 8)
Q4_K    ``.packed`` as Q4_0, ``.sc``, ``.m``, ``.d``,   dense: (d*sc) * q - dmin*m; linear:
        ``.dmin`` as Q5_K                               MatMulNBits(x, packed, d*sc, zero points
                                                        0) - blocksums(x) @ (dmin*m)^T
======  ==============================================  =========================================

Every scale product (a float16 times an integer of at most 8 bits) is exact in float32, so each
dense value is one rounding of the same product and difference as gguf's. Q4_K's ``linear``
never forms ``d*sc*q - dmin*m``: it subtracts the mins' contribution (x's sums over each block
of 32, times dmin*m) after the product, the same result up to float32 summation order (for
x = I, exactly W^T). Bytes against the GGUF's: 1.0 for every type but Q4_K (1.03), Q6_K (1.30:
6-bit codes in int8) and Q5_K (1.57: 5-bit codes in uint8), the narrowest integers
DequantizeLinear takes for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from gdnc.frontends.ggml_fields import field
from gdnc.ir.builder import FLOAT, GraphBuilder

DQ_OPSET = 21  # DequantizeLinear with block_size
MS_DOMAIN = "com.microsoft"
SUPER = 256  # elements of a K-quant super-block (one d, one dmin)
_U8, _I8, _F16 = TensorProto.UINT8, TensorProto.INT8, TensorProto.FLOAT16


@dataclass(frozen=True)
class Part:
    """One stored initializer: named ``<tensor name><suffix>``, of ONNX type ``dtype`` and shape
    ``shape``; ``make(rows)`` gives its values for rows of the tensor as the file holds them
    (uint8 [R, row bytes] -> [R, n]; ``view``: a view of ``rows``, nothing converted)."""

    suffix: str
    dtype: int
    shape: tuple[int, ...]
    make: Callable[[np.ndarray], np.ndarray]
    view: bool = False


@dataclass(frozen=True)
class Stored:
    """What the reading nodes see: the value name of each part (by suffix) and the tensor's
    shape (its rows -1 when the parts hold rows gathered from the tensor's)."""

    names: Mapping[str, str]
    shape: tuple[int, ...]

    def __getitem__(self, suffix: str) -> str:
        return self.names[suffix]


Dense = Callable[[GraphBuilder, Stored, str], None]  # emits the float32 tensor as ``out``
Linear = Callable[[GraphBuilder, Stored, str, str], None]  # emits x @ W^T of value x as ``out``


@dataclass(frozen=True)
class Form:
    """The parts a type stores for a tensor of a given shape and the nodes that read them
    (``dense`` None: the one part IS the tensor); ``opset``: the default-domain opset its nodes
    need."""

    parts: Callable[[tuple[int, ...]], list[Part]]
    dense: Dense | None
    linear: Linear | None = None
    opset: int = 0


# ------------------------------------------------------------------ parts

def _float(suffix: str, dtype: int, np_type: type) -> Callable[[tuple[int, ...]], list[Part]]:
    return lambda shape: [Part(suffix, dtype, shape, lambda rows: rows.view(np_type), view=True)]


def _field(qtype: str, name: str, dtype: int, per: int = 1) -> Callable[[tuple[int, ...]], Part]:
    """The part ``.<name>`` holding field ``name`` of a ``qtype`` tensor, one value per ``per``
    elements: [.., N, K / per]."""
    return lambda shape: Part(f".{name}", dtype, (*shape[:-1], shape[-1] // per),
                              lambda rows: field(rows, qtype, name))


def _packed(qtype: str) -> Callable[[tuple[int, ...]], Part]:
    """The 4-bit codes two a byte as MatMulNBits reads them: [.., N, K/32, 16]."""
    def pairs(rows: np.ndarray) -> np.ndarray:
        codes = field(rows, qtype, "codes")
        return codes[:, 0::2] | (codes[:, 1::2] << 4)
    return lambda shape: Part(".packed", _U8, (*shape[:-1], shape[-1] // 32, 16), pairs)


def _parts(*makers: Callable[[tuple[int, ...]], Part]) -> Callable[[tuple[int, ...]], list[Part]]:
    return lambda shape: [make(shape) for make in makers]


def _k_quant(qtype: str, codes: Callable[[tuple[int, ...]], Part]) -> Callable[[tuple[int, ...]], list[Part]]:
    """Q4_K's or Q5_K's parts: ``codes`` and the scales and mins of its sub-blocks and blocks."""
    return _parts(codes, _field(qtype, "sc", _U8, 32), _field(qtype, "m", _U8, 32),
                  _field(qtype, "d", _F16, SUPER), _field(qtype, "dmin", _F16, SUPER))


# ------------------------------------------------------------------ reading nodes

def _cast(e: GraphBuilder, x: str) -> str:
    return e.op("Cast", x, to=FLOAT)


def _sub_scales(e: GraphBuilder, s: Stored, d: str, sub: str, block: int = 32) -> str:
    """``d * sub`` float32 [.., N, K/block]: the scale of each sub-block of ``block`` elements
    times its super-block's d."""
    *lead, n, k = s.shape
    per = SUPER // block
    grouped = e.reshape(_cast(e, s[sub]), [*lead, n, k // SUPER, per])
    scaled = e.op("Mul", grouped, e.unsqueeze(_cast(e, s[d]), -1))
    return e.reshape(scaled, [*lead, n, k // SUPER * per])


def _per_block(e: GraphBuilder, s: Stored, op: str, x: str, v: str, block: int, out: str | None = None
               ) -> str:
    """``op(x, v)`` with x [.., N, K / block, block] (or [.., N, K]) and one v [.., N, K/block]
    per block; [.., N, K]."""
    *lead, n, k = s.shape
    y = e.op(op, e.reshape(x, [*lead, n, k // block, block]), e.unsqueeze(v, -1))
    return e.op("Reshape", y, e.const([*lead, n, k]), out=out)


def _dequantize(e: GraphBuilder, codes: str, scale: str, block: int, out: str | None = None) -> str:
    return e.op("DequantizeLinear", codes, scale, axis=-1, block_size=block, out=out)


def _nibbles(e: GraphBuilder, s: Stored) -> str:
    """The 4-bit codes of ``.packed`` as float32 [.., N, K/32, 32]."""
    *lead, n, k = s.shape
    low = e.op("BitwiseAnd", s[".packed"], e.const(15, np.uint8))
    high = e.op("BitShift", s[".packed"], e.const(4, np.uint8), direction="RIGHT")
    pairs = e.op("Concat", e.unsqueeze(low, -1), e.unsqueeze(high, -1), axis=-1)  # [.., 16, 2]
    return _cast(e, e.reshape(pairs, [*lead, n, k // 32, 32]))


def _cast_dense(e: GraphBuilder, s: Stored, out: str) -> None:
    (part,) = s.names.values()
    e.op("Cast", part, to=FLOAT, out=out)


def _q8_0_dense(e: GraphBuilder, s: Stored, out: str) -> None:
    _dequantize(e, s[".codes"], _cast(e, s[".d"]), 32, out)


def _q6_k_dense(e: GraphBuilder, s: Stored, out: str) -> None:
    _dequantize(e, s[".codes"], _sub_scales(e, s, ".d", ".sc", 16), 16, out)


def _q5_k_dense(e: GraphBuilder, s: Stored, out: str) -> None:
    scaled = _dequantize(e, s[".codes"], _sub_scales(e, s, ".d", ".sc"), 32)
    _per_block(e, s, "Sub", scaled, _sub_scales(e, s, ".dmin", ".m"), 32, out)


def _q4_0_dense(e: GraphBuilder, s: Stored, out: str) -> None:
    centred = e.op("Sub", _nibbles(e, s), e.const(8.0, np.float32))
    _per_block(e, s, "Mul", centred, _cast(e, s[".d"]), 32, out)


def _q4_k_dense(e: GraphBuilder, s: Stored, out: str) -> None:
    scaled = _per_block(e, s, "Mul", _nibbles(e, s), _sub_scales(e, s, ".d", ".sc"), 32)
    _per_block(e, s, "Sub", scaled, _sub_scales(e, s, ".dmin", ".m"), 32, out)


def _matmul_nbits(e: GraphBuilder, s: Stored, x: str, scales: str, *zero_points: str,
                  out: str | None = None) -> str:
    n, k = s.shape
    return e.op("MatMulNBits", x, s[".packed"], scales, *zero_points, domain=MS_DOMAIN, K=k, N=n,
                bits=4, block_size=32, out=out)


def _q4_0_linear(e: GraphBuilder, s: Stored, x: str, out: str) -> None:
    _matmul_nbits(e, s, x, _cast(e, s[".d"]), out=out)


def _q4_k_linear(e: GraphBuilder, s: Stored, x: str, out: str) -> None:
    n, k = s.shape
    zeros = e.op("ConstantOfShape", e.const([n, k // 32]), value=np.zeros(1, np.float32))
    scaled = _matmul_nbits(e, s, x, _sub_scales(e, s, ".d", ".sc"), zeros)
    block_shape = e.op("Concat", e.op("Shape", x, end=-1), e.const([k // 32, 32]), axis=0)
    sums = e.reduce("ReduceSum", e.op("Reshape", x, block_shape), -1, keepdims=0)  # [.., K/32]
    mins = e.op("MatMul", sums, e.op("Transpose", _sub_scales(e, s, ".dmin", ".m"), perm=[1, 0]))
    e.op("Sub", scaled, mins, out=out)


FORMS: dict[str, Form] = {
    "F32": Form(_float("", TensorProto.FLOAT, np.float32), None),
    "F16": Form(_float(".f16", _F16, np.float16), _cast_dense),
    "BF16": Form(_float(".bf16", TensorProto.BFLOAT16, np.uint16), _cast_dense),
    "Q8_0": Form(_parts(_field("Q8_0", "codes", _I8), _field("Q8_0", "d", _F16, 32)), _q8_0_dense,
                 opset=DQ_OPSET),
    "Q6_K": Form(_parts(_field("Q6_K", "codes", _I8), _field("Q6_K", "sc", _I8, 16),
                        _field("Q6_K", "d", _F16, SUPER)), _q6_k_dense, opset=DQ_OPSET),
    "Q5_K": Form(_k_quant("Q5_K", _field("Q5_K", "codes", _U8)), _q5_k_dense, opset=DQ_OPSET),
    "Q4_0": Form(_parts(_packed("Q4_0"), _field("Q4_0", "d", _F16, 32)), _q4_0_dense, _q4_0_linear),
    "Q4_K": Form(_k_quant("Q4_K", _packed("Q4_K")), _q4_k_dense, _q4_k_linear),
}
