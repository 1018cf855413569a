"""gdnc.opset.onnx_ops against onnxruntime on single-node models with fresh random inputs."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import gdnc.opset.onnx_ops  # noqa: F401  (registers the ops)
from gdnc.errors import UnsupportedOpError
from gdnc.opset.registry import OpContext, lookup, supported_ops
from tests.runtime.test_control_flow import CONTROL_FLOW_OPS

Gen = Callable[[np.random.Generator], np.ndarray]
INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


# ---- input generators (called once per test: every case gets fresh arrays) -------------


def f32(*shape: int) -> Gen:
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


def pos(*shape: int) -> Gen:
    return lambda rng: rng.uniform(0.5, 3.0, shape).astype(np.float32)


def scaled(scale: float, *shape: int) -> Gen:
    return lambda rng: (scale * rng.standard_normal(shape)).astype(np.float32)


def ints(lo: int, hi: int, *shape: int, dtype: type = np.int64) -> Gen:
    return lambda rng: rng.integers(lo, hi, shape).astype(dtype)


def nonzero(hi: int, *shape: int) -> Gen:
    """Integers in +-[1, hi): safe divisors."""
    return lambda rng: rng.integers(1, hi, shape) * rng.choice([-1, 1], shape)


def bools(*shape: int) -> Gen:
    return lambda rng: rng.random(shape) < 0.5


def halves(*shape: int) -> Gen:
    """Multiples of 0.5, so Round meets its ties."""
    return lambda rng: (rng.integers(-8, 9, shape) / 2).astype(np.float32)


def special(*shape: int) -> Gen:
    """Normal floats with some +inf, -inf and NaN."""

    def gen(rng: np.random.Generator) -> np.ndarray:
        x = rng.standard_normal(shape).astype(np.float32)
        x.flat[rng.choice(x.size, 3, replace=False)] = [np.inf, -np.inf, np.nan]
        return x

    return gen


def rows_of_distinct(n: int, rows: int, k: int) -> Gen:
    """[rows, k] int64, each row k distinct indices of range(n), some given negatively."""

    def gen(rng: np.random.Generator) -> np.ndarray:
        idx = np.stack([rng.permutation(n)[:k] for _ in range(rows)])
        return np.where(rng.random(idx.shape) < 0.3, idx - n, idx)

    return gen


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def scalar(value: Any, dtype: type = np.int64) -> np.ndarray:
    return np.array(value, dtype=dtype)


# ---- cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    op: str
    inputs: tuple[Gen | np.ndarray | None, ...]
    attrs: dict[str, Any]
    opset: int
    outputs: int


def case(op: str, *inputs: Any, opset: int = 18, outputs: int = 1, label: str = "", **attrs: Any):
    """A pytest param; ``attrs`` are ONNX attributes (numpy arrays become TENSOR)."""
    return pytest.param(Case(op, inputs, attrs, opset, outputs), id=f"{op}-{label}-v{opset}")


_UNARY_INPUT = {
    "Sqrt": pos(3, 4),
    "Reciprocal": pos(3, 4),
    "Log": pos(3, 4),
    "Round": halves(3, 4),
    "IsNaN": special(3, 4),
}
# fmt: off
_UNARY = [
    "Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs", "Tanh", "Sigmoid", "Softplus", "Relu",
    "Erf", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "IsNaN", "Identity",
]
# fmt: on

ELEMENTWISE = [
    *(case(op, _UNARY_INPUT.get(op, scaled(2.0, 3, 4)), label="f32") for op in _UNARY),
    *(case(op, ints(-5, 6, 3, 4, dtype=np.int32), label="i32") for op in ("Abs", "Neg", "Sign")),
    case("Relu", ints(-5, 6, 3, 4), label="i64"),
    case("Not", bools(3, 4), label="bool"),
    *(
        case(op, f32(2, 3, 4), f32(3, 1), label="bcast")
        for op in ("Add", "Sub", "Mul", "Less", "Greater")
    ),
    case("Add", ints(-9, 9, 2, 3, dtype=np.int32), ints(-9, 9, 3, dtype=np.int32), label="i32"),
    case("Sub", ints(-99, 99, 4), ints(-99, 99, 2, 1), label="i64"),
    case("Mul", f32(2, 3), f32(), label="scalar"),
    case("Div", f32(2, 3, 4), pos(4), label="bcast"),
    case("Div", ints(-20, 21, 3, 4), nonzero(6, 3, 4), label="i64-trunc"),
    case("Div", ints(-20, 21, 4, dtype=np.int32), ints(1, 6, 1, dtype=np.int32), label="i32"),
    case("Pow", pos(2, 3), f32(3), label="f32"),
    case("Pow", f32(2, 3), ints(0, 4, 2, 3), opset=15, label="f32-i64exp"),
    case("Pow", ints(-4, 5, 3, 4), ints(0, 4, 3, 4), label="i64"),
    case("Equal", ints(0, 3, 3, 4), ints(0, 3, 4), label="i64"),
    case("Equal", bools(3, 4), bools(3, 4), label="bool"),
    case("LessOrEqual", ints(0, 3, 3, 4), ints(0, 3, 3, 1), label="i64"),
    case("GreaterOrEqual", ints(0, 3, 3, 4), ints(0, 3, 4), label="i64"),
    case("GreaterOrEqual", f32(3, 4), f32(3, 4), label="f32"),
    *(case(op, bools(2, 3, 4), bools(3, 1), label="bcast") for op in ("And", "Or", "Xor")),
    *(case(op, f32(2, 3, 4), f32(3, 1), f32(4), label="3in") for op in ("Max", "Min")),
    *(case(op, f32(3, 4), label="1in") for op in ("Max", "Min")),
    *(case(op, ints(-9, 9, 3, 4), ints(-9, 9, 4), label="i64") for op in ("Max", "Min")),
    case("Mod", ints(-20, 21, 3, 4), nonzero(6, 3, 4), label="i64"),
    case("Mod", ints(-20, 21, 3, 4), nonzero(6, 4), fmod=1, label="i64-fmod"),
    case("Mod", scaled(5.0, 3, 4), pos(4), fmod=1, label="f32-fmod"),
    case("Clip", f32(3, 4), opset=6, min=-0.5, max=0.7, label="attrs"),
    case("Clip", f32(3, 4), opset=6, min=-0.5, label="attr-min"),
    case("Clip", f32(3, 4), scalar(-0.5, np.float32), scalar(0.7, np.float32), label="inputs"),
    case("Clip", f32(3, 4), None, scalar(0.2, np.float32), label="max-only"),
    case("Clip", f32(3, 4), label="no-bounds"),
    case("Clip", ints(-9, 9, 3, 4), scalar(-3), scalar(4), label="i64"),
    case("Where", bools(2, 3, 4), f32(3, 4), f32(2, 1, 4), label="bcast"),
    case("Where", bools(3, 4), ints(-9, 9, 3, 4), ints(-9, 9, 1), label="i64"),
    case("IsInf", special(3, 4), label="both"),
    case("IsInf", special(3, 4), detect_negative=0, label="pos"),
    case("IsInf", special(3, 4), detect_positive=0, label="neg"),
    *(
        case("Cast", gen, to=to, label=label)
        for gen, to, label in [
            (scaled(10.0, 3, 4), onnx.TensorProto.INT32, "f32-i32"),
            (scaled(10.0, 3, 4), onnx.TensorProto.INT64, "f32-i64"),
            (halves(3, 4), onnx.TensorProto.BOOL, "f32-bool"),
            (ints(-2, 3, 3, 4), onnx.TensorProto.BOOL, "i64-bool"),
            (ints(-9, 9, 3, 4), onnx.TensorProto.FLOAT, "i64-f32"),
            (bools(3, 4), onnx.TensorProto.FLOAT, "bool-f32"),
            (f32(3, 4), onnx.TensorProto.FLOAT16, "f32-f16"),
            (f32(3, 4), onnx.TensorProto.DOUBLE, "f32-f64"),
            (ints(-99, 99, 3, 4), onnx.TensorProto.INT32, "i64-i32"),
        ]
    ),
    case("CastLike", scaled(10.0, 3, 4), scalar(0), label="f32-i64"),
    case("CastLike", ints(-9, 9, 3, 4), scalar(0.0, np.float32), label="i64-f32"),
    case("Dropout", f32(3, 4), opset=7, label="y"),
    case("Dropout", f32(3, 4), opset=7, outputs=2, label="mask-t"),
    case("Dropout", f32(3, 4), opset=10, outputs=2, label="mask"),
    case("Dropout", f32(3, 4), scalar(0.3, np.float32), outputs=2, label="ratio"),
    case("Dropout", f32(3, 4), None, scalar(False, bool), outputs=2, label="not-training"),
]

SHAPE = [
    case("Shape", f32(2, 3, 4), opset=13, label="all"),
    case("Shape", f32(2, 3, 4, 5), opset=15, start=1, end=-1, label="start-end"),
    case("Shape", f32(2, 3, 4), opset=15, start=-2, label="neg-start"),
    case("Shape", f32(2, 3), opset=15, start=5, label="clamped"),
    case("Size", f32(2, 3, 4), label="f32"),
    case("Reshape", f32(2, 3, 4), i64(0, -1), label="zero-copies"),
    case("Reshape", f32(2, 3, 4), i64(4, -1, 3), label="infer"),
    case("Reshape", f32(2, 3, 4), i64(6, 4), opset=14, allowzero=1, label="allowzero"),
    case("Reshape", f32(0, 3), i64(3, 0), opset=14, allowzero=1, label="allowzero-empty"),
    case("Transpose", f32(2, 3, 4), label="default"),
    case("Transpose", f32(2, 3, 4, 5), perm=[0, 2, 1, 3], label="perm"),
    case("Unsqueeze", f32(3, 4), opset=11, axes=[0, -1], label="attr"),
    case("Unsqueeze", f32(3, 4), i64(1, -1), opset=13, label="input"),
    case("Unsqueeze", f32(), i64(0), opset=13, label="scalar"),
    case("Squeeze", f32(3, 1, 4), opset=11, axes=[1], label="attr"),
    case("Squeeze", f32(1, 3, 4, 1), i64(-1, 0), opset=13, label="input"),
    case("Squeeze", f32(1, 3, 1, 4), opset=13, label="all"),
    case("Flatten", f32(2, 3, 4), label="default"),
    *(case("Flatten", f32(2, 3, 4), axis=a, label=f"axis{a}") for a in (0, -1, 3)),
    case("Concat", f32(2, 3), f32(2, 1), f32(2, 4), axis=1, label="3in"),
    case("Concat", ints(-9, 9, 2, 3), ints(-9, 9, 4, 3), axis=-2, label="neg-axis"),
    case("Split", f32(2, 6), opset=11, outputs=2, axis=1, split=[2, 4], label="attr"),
    case("Split", f32(6, 2), opset=11, outputs=3, label="equal"),
    case("Split", f32(2, 6), i64(1, 5), opset=13, outputs=2, axis=-1, label="input"),
    case("Split", f32(4, 2), opset=13, outputs=2, label="equal"),
    case("Split", f32(7, 2), opset=18, outputs=3, num_outputs=3, label="uneven"),
    case("Split", f32(2, 6), i64(3, 3), opset=18, outputs=2, axis=1, label="input"),
    case("Slice", f32(4, 5, 6), opset=9, starts=[1, -4], ends=[3, 100], axes=[0, 2], label="attrs"),
    case("Slice", f32(6, 5), i64(1, 0), i64(6, 4), i64(0, 1), i64(2, 3), label="steps"),
    case("Slice", f32(6, 5), i64(-1), i64(INT64_MIN), i64(0), i64(-1), label="reverse"),
    case("Slice", f32(6, 5), i64(4, 10), i64(0, -10), i64(0, 1), i64(-2, -3), label="neg-clamp"),
    case("Slice", f32(6, 5), i64(-3, 2), i64(INT64_MAX, 1000), label="no-axes"),
    case("Slice", f32(4, 6, 5), i64(1), i64(-1), i64(-2), label="neg-axis"),
    case("Slice", f32(6, 5), i64(4), i64(2), i64(1), label="empty"),
    case("Expand", f32(3, 1), i64(2, 1, 4), label="bcast"),
    case("Expand", f32(2, 3), i64(1, 3), label="keep-larger"),
    case("Tile", f32(2, 1, 3), i64(2, 3, 1), label="f32"),
    case("Tile", ints(-9, 9, 2, 3), i64(1, 2), label="i64"),
    case("ConstantOfShape", i64(2, 3), label="default"),
    case("ConstantOfShape", i64(2, 3), value=np.array([7], np.int64), label="i64"),
    case("ConstantOfShape", i64(4), value=np.array([0.5], np.float16), label="f16"),
    case(
        "ConstantOfShape", np.zeros(0, np.int64), value=np.array([2.5], np.float32), label="scalar"
    ),
    case("Constant", value=np.arange(6, dtype=np.float32).reshape(2, 3), label="value"),
    case("Constant", value_float=1.5, label="float"),
    case("Constant", value_floats=[1.5, -2.0], label="floats"),
    case("Constant", value_int=3, label="int"),
    case("Constant", value_ints=[3, -1, 4], label="ints"),
    case("Range", scalar(2), scalar(17), scalar(3), label="i64"),
    case("Range", scalar(5, np.int32), scalar(-6, np.int32), scalar(-2, np.int32), label="i32"),
    case("Range", *(scalar(v, np.float32) for v in (0.5, 4.0, 0.25)), label="f32"),
    case("Range", scalar(5), scalar(1), scalar(1), label="empty"),
    case("Range", scalar(-3), scalar(8), scalar(4), label="i64-ceil"),
    case("Range", *(scalar(v, np.float32) for v in (1.0, -2.0, -0.75)), label="f32-neg"),
]

INDEXING = [
    case("Gather", f32(5, 3), ints(-5, 5, 2, 4), label="neg-idx"),
    case("Gather", f32(2, 5, 3), scalar(-2), axis=1, label="scalar-idx"),
    case("Gather", f32(2, 3, 5), ints(-5, 5, 4, dtype=np.int32), axis=-1, label="i32-idx"),
    case("GatherElements", f32(3, 5), ints(-5, 5, 3, 4), axis=1, label="axis1"),
    case("GatherElements", f32(4, 3), ints(-4, 4, 2, 3), label="axis0"),
    case("GatherND", f32(4, 5, 3), ints(-4, 4, 2, 3, 2), label="k2"),
    case("GatherND", f32(4, 5, 3), ints(0, 4, 6, 1), label="k1"),
    case("GatherND", f32(2, 5, 3), ints(-5, 5, 2, 4, 1), batch_dims=1, label="batch1"),
    case("ScatterElements", f32(3, 5), rows_of_distinct(5, 3, 2), f32(3, 2), axis=1, label="none"),
    *(
        case(
            "ScatterElements",
            f32(3, 5),
            ints(-5, 5, 3, 4),
            f32(3, 4),
            axis=-1,
            reduction=r,
            opset=16 if r in ("add", "mul") else 18,
            label=r,
        )
        for r in ("add", "mul", "max", "min")
    ),
    case("ScatterND", f32(4, 5, 3), i64(0, -1, 2, 1).reshape(2, 2), f32(2, 3), label="none"),
    case("ScatterND", f32(6, 3), i64(1, -2, 5).reshape(3, 1), f32(3, 3), label="none-k1"),
    *(
        case(
            "ScatterND",
            f32(4, 5, 3),
            ints(-4, 4, 6, 1),
            f32(6, 5, 3),
            reduction=r,
            opset=16 if r in ("add", "mul") else 18,
            label=r,
        )
        for r in ("add", "mul", "max", "min")
    ),
    case("Trilu", f32(4, 5), label="upper"),
    case("Trilu", f32(2, 4, 5), scalar(-1), upper=0, label="lower-k"),
    case("Trilu", ints(-9, 9, 4, 5), scalar(2), label="i64-upper-k"),
    case("NonZero", halves(3, 4), label="f32"),
    case("NonZero", bools(2, 3, 4), label="bool"),
    case("OneHot", ints(-6, 6, 2, 3), scalar(5), np.array([0.5, 2.0], np.float32), label="neg"),
    case(
        "OneHot",
        ints(-4, 5, 3, dtype=np.float32),
        scalar(4.0, np.float32),
        np.array([-1.0, 7.0], np.float32),
        axis=0,
        label="f32-axis0",
    ),
    case("OneHot", ints(0, 5, 2, 3), scalar(5), i64(0, 1), opset=9, axis=1, label="axis1"),
]

_REDUCE_ATTR_V = {"ReduceSum": 11}
REDUCE = [
    *(
        c
        for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2")
        for c in (
            case(op, f32(2, 3, 4), opset=11, axes=[1], keepdims=0, label="attr"),
            case(op, f32(2, 3, 4), opset=11, label="attr-all"),
            case(op, f32(2, 3, 4), i64(-1, 0), opset=18, label="input"),
            case(op, f32(2, 3, 4), i64(1), opset=18, keepdims=0, label="input-nokeep"),
            case(op, f32(2, 3, 4), opset=18, label="input-all"),
            case(op, f32(2, 3, 4), opset=18, noop_with_empty_axes=1, label="noop"),
        )
    ),
    case("ReduceSum", f32(2, 3, 4), i64(2), opset=13, label="input"),
    case("ReduceSum", f32(2, 3, 4), np.zeros(0, np.int64), opset=13, label="empty-axes"),
    case("ReduceSum", ints(-9, 9, 2, 3, dtype=np.int32), i64(0), opset=13, label="i32"),
    case("ReduceMax", ints(-9, 9, 2, 3), i64(1), label="i64"),
    case("ReduceProd", ints(-3, 4, 2, 3), i64(-1), label="i64"),
    case("ReduceMean", ints(-9, 9, 2, 3, 4), i64(0, 2), label="i64-trunc"),
    case("ReduceL2", ints(-9, 9, 2, 3, dtype=np.int32), i64(1), label="i32"),
    case("ArgMax", f32(3, 4, 5), label="default"),
    case("ArgMin", f32(3, 4, 5), axis=-1, keepdims=0, label="axis"),
    *(
        case(op, ints(0, 3, 4, 6), opset=12, axis=1, select_last_index=last, label=f"ties{last}")
        for op in ("ArgMax", "ArgMin")
        for last in (0, 1)
    ),
    case("TopK", f32(3, 8), opset=1, outputs=2, k=3, label="attr"),
    case("TopK", f32(3, 8), i64(4), opset=10, outputs=2, label="input"),
    case("TopK", f32(6, 3), i64(2), opset=11, outputs=2, axis=0, largest=0, label="smallest"),
    case("TopK", ints(0, 4, 3, 9), i64(5), opset=11, outputs=2, label="ties"),
    case("TopK", ints(0, 4, 3, 9), i64(5), opset=11, outputs=2, largest=0, label="ties-min"),
    case("CumSum", f32(4, 3), scalar(0), label="default"),
    case("CumSum", f32(2, 5), scalar(-1, np.int32), exclusive=1, label="exclusive"),
    case("CumSum", f32(2, 5), scalar(1), reverse=1, label="reverse"),
    case("CumSum", ints(-9, 9, 2, 5), scalar(1), exclusive=1, reverse=1, label="i64-both"),
]

NN = [
    case("MatMul", f32(3, 4), f32(4, 5), label="2d"),
    case("MatMul", f32(2, 1, 3, 4), f32(3, 4, 5), label="batched-bcast"),
    case("MatMul", f32(4), f32(2, 4, 5), label="1d-lhs"),
    case("MatMul", f32(2, 3, 4), f32(4), label="1d-rhs"),
    case("MatMul", ints(-9, 9, 3, 4), ints(-9, 9, 4, 2), label="i64"),
    case(
        "MatMul",
        ints(-9, 9, 4, dtype=np.int32),
        ints(-9, 9, 2, 4, 3, dtype=np.int32),
        label="i32-1d-lhs",
    ),
    case("MatMul", ints(-9, 9, 2, 1, 3, 4), ints(-9, 9, 5, 4, 2), label="i64-bcast"),
    case("MatMul", ints(-9, 9, 3, 4), ints(-9, 9, 4), label="i64-1d-rhs"),
    case("Gemm", f32(3, 4), f32(4, 5), f32(3, 5), opset=7, label="c-full"),
    case(
        "Gemm",
        f32(4, 3),
        f32(5, 4),
        f32(1, 5),
        transA=1,
        transB=1,
        alpha=0.5,
        beta=2.0,
        label="trans-alpha-beta",
    ),
    case("Gemm", f32(3, 4), f32(4, 5), scalar(1.5, np.float32), beta=-1.0, label="c-scalar"),
    case("Gemm", f32(3, 4), f32(5, 4), transB=1, alpha=2.0, label="no-c"),
    *(
        case("Einsum", *ins, equation=eq, label=label)
        for ins, eq, label in [
            ((f32(3, 4), f32(4, 5)), "ij,jk->ik", "mm"),
            ((f32(2, 3, 4, 5), f32(2, 3, 6, 5)), "bhqd,bhkd->bhqk", "attn"),
            ((f32(2, 3, 4),), "...ij->...ji", "ellipsis"),
            ((f32(4, 4),), "ii->i", "diag"),
            ((f32(3, 4),), "ij->", "sum"),
            ((f32(3, 4), f32(4, 5)), "ij, jk", "implicit"),
        ]
    ),
    case("Conv", f32(2, 6, 9), f32(6, 1, 4), group=6, pads=[3, 0], label="1d-depthwise-causal"),
    case("Conv", f32(2, 6, 9), f32(4, 3, 3), f32(4), group=2, strides=[2], dilations=[2], label="1d-grouped"),
    case("Conv", f32(1, 3, 7, 6), f32(5, 3, 3, 2), f32(5), pads=[1, 0, 2, 1], strides=[2, 1],
         label="2d-pads"),
    case("Conv", f32(1, 2, 4, 5, 3), f32(3, 2, 2, 2, 2), auto_pad="VALID", label="3d-valid"),
    *(
        c
        for op in ("Softmax", "LogSoftmax")
        for c in (
            case(op, f32(2, 3, 4), opset=11, label="coerce-default"),
            case(op, f32(2, 3, 4), opset=11, axis=-1, label="coerce-last"),
            case(op, f32(2, 3, 4), opset=13, label="default"),
            case(op, scaled(5.0, 2, 3, 4), opset=13, axis=1, label="axis1"),
        )
    ),
    case("LayerNormalization", f32(2, 3, 8), f32(8), f32(8), opset=17, label="bias"),
    case(
        "LayerNormalization",
        scaled(3.0, 2, 3, 4),
        f32(3, 4),
        opset=17,
        outputs=3,
        axis=1,
        epsilon=1e-3,
        label="stats",
    ),
    case("RMSNormalization", f32(2, 3, 8), f32(8), opset=23, label="default"),
    case(
        "RMSNormalization",
        scaled(3.0, 2, 3, 4),
        f32(3, 4),
        opset=23,
        axis=-2,
        epsilon=1e-3,
        label="axis",
    ),
    case("Gelu", scaled(3.0, 3, 4), opset=20, label="exact"),
    case("Gelu", scaled(3.0, 3, 4), opset=20, approximate="tanh", label="tanh"),
]

CASES = ELEMENTWISE + SHAPE + INDEXING + REDUCE + NN


# ---- harness ---------------------------------------------------------------------------------


def _materialize(spec: Gen | np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
    """Literals as given; generated arrays redrawn until not all zeros."""
    if spec is None or isinstance(spec, np.ndarray):
        return spec
    while True:
        arr = np.asarray(spec(rng))
        if arr.size == 0 or arr.any():
            return arr


def _onnx_attr(value: Any) -> Any:
    return numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value


def _run_ort(c: Case, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
    names = ["" if a is None else f"in{i}" for i, a in enumerate(arrays)]
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, arrays, strict=True)
        if a is not None
    ]
    outs = [f"out{i}" for i in range(c.outputs)]
    attrs = {k: _onnx_attr(v) for k, v in c.attrs.items()}
    node = helper.make_node(c.op, names, outs, **attrs)
    graph = helper.make_graph(
        [node], c.op, graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", c.opset)], ir_version=10
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {n: a for n, a in zip(names, arrays, strict=True) if a is not None})


def _arrays(c: Case, request: pytest.FixtureRequest) -> list[np.ndarray | None]:
    """The case's inputs, drawn fresh for this test (seeded by its id, so reproducible)."""
    rng = np.random.default_rng(zlib.crc32(request.node.callspec.id.encode()))
    return [_materialize(spec, rng) for spec in c.inputs]


def _run_ours(c: Case, arrays: list[np.ndarray | None], device: str) -> list[np.ndarray]:
    """Run the registered implementation on ``device``; outputs come back as numpy."""
    tensors = [None if a is None else torch.from_numpy(a.copy()).to(device) for a in arrays]
    ctx = OpContext(op_type=c.op, domain="", attrs=c.attrs, opset=c.opset, num_outputs=c.outputs)
    got = lookup("", c.op, c.opset)(ctx, tensors)
    for t, a in zip(tensors, arrays, strict=True):  # inputs are never modified in place
        if t is not None:
            np.testing.assert_array_equal(t.cpu().numpy(), a)
    on_device = any(a is not None for a in arrays)  # Constant has no input to follow
    for i, out in enumerate(got):
        assert isinstance(out, torch.Tensor), f"output {i}"
        assert out.device.type == (device if on_device else "cpu"), f"output {i}"
    return [out.cpu().numpy() for out in got]


def _assert_same(got: list[np.ndarray], expected: list[np.ndarray], tol: float) -> None:
    """Same count, dtypes and shapes; floats within ``tol`` (rtol and atol), the rest exact."""
    assert len(got) == len(expected)
    for i, (out, ref) in enumerate(zip(got, expected, strict=True)):
        assert (out.dtype, out.shape) == (ref.dtype, ref.shape), f"output {i}"
        if np.issubdtype(ref.dtype, np.floating):
            np.testing.assert_allclose(out, ref, rtol=tol, atol=tol, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(out, ref, err_msg=f"output {i}")


@pytest.mark.parametrize("c", CASES)
def test_matches_onnxruntime(c: Case, request: pytest.FixtureRequest) -> None:
    arrays = _arrays(c, request)
    _assert_same(_run_ours(c, arrays, "cpu"), _run_ort(c, arrays), tol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("c", CASES)
def test_cuda_matches_cpu(c: Case, request: pytest.FixtureRequest) -> None:
    arrays = _arrays(c, request)
    _assert_same(_run_ours(c, arrays, "cuda"), _run_ours(c, arrays, "cpu"), tol=1e-5)


def test_every_registered_op_is_tested() -> None:
    registered = {name for name in supported_ops() if "::" not in name}
    tested = {p.values[0].op for p in CASES} | CONTROL_FLOW_OPS
    assert registered - tested == set()
    assert tested - registered == set()


def test_dropout_training_mode_is_refused() -> None:
    ctx = OpContext(op_type="Dropout", domain="", attrs={}, opset=13, num_outputs=1)
    x, ratio, training = torch.ones(3), torch.tensor(0.5), torch.tensor(True)
    with pytest.raises(UnsupportedOpError, match="training_mode"):
        lookup("", "Dropout", 13)(ctx, [x, ratio, training])


def test_conv_same_padding_is_refused() -> None:
    ctx = OpContext(op_type="Conv", domain="", attrs={"auto_pad": "SAME_UPPER"}, opset=11, num_outputs=1)
    with pytest.raises(UnsupportedOpError, match="SAME_UPPER"):
        lookup("", "Conv", 11)(ctx, [torch.ones(1, 2, 5), torch.ones(2, 2, 3)])


def test_unknown_op_raises() -> None:
    with pytest.raises(UnsupportedOpError, match="NoSuchOp"):
        lookup("", "NoSuchOp", 18)
    with pytest.raises(UnsupportedOpError, match="Gelu"):
        lookup("", "Gelu", 19)
