"""A small helper to write ONNX-opset graphs into the IR: one call per node, names made up."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto

from gdnc.ir.graph import Graph, Model, Node, Value, make_attrs

OPSET = 18  # axes of Reduce*/Unsqueeze/Squeeze, Split sizes, Slice bounds are inputs


class Emit:
    """Appends nodes to ``graph`` in program order; every method returns output name(s)."""

    def __init__(self, name: str) -> None:
        self.graph = Graph(name)
        self.prefix = ""

    def model(self) -> Model:
        return Model(self.graph, opset_imports={"": OPSET}, ir_version=9)

    def input(self, name: str, dtype: int, shape: Sequence[int | str]) -> str:
        self.graph.inputs.append(name)
        self.graph.values[name] = Value(name, dtype, tuple(shape))
        return name

    def output(self, value: str, name: str, first: bool = False) -> str:
        """Expose ``value`` as graph output ``name`` (through an Identity), last or first."""
        self.graph.add_node(Node("Identity", [value], [name]))
        self.graph.outputs.insert(0 if first else len(self.graph.outputs), name)
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        return self.graph.add_initializer(name, np.ascontiguousarray(array, dtype=np.float32))

    def const(self, value: object, dtype: type = np.int64) -> str:
        return self.graph.constant(np.asarray(value, dtype=dtype))

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: object) -> list[str]:
        outs = [self.graph.fresh_name(f"{self.prefix}{op_type.lower()}") for _ in range(n_out)]
        self.graph.add_node(Node(op_type, list(inputs), outs, attrs=make_attrs(**attrs)))
        return outs

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        return self.ops(op_type, inputs, 1, **attrs)[0]

    # --------------------------------------------------------------- shorthands
    def matmul_t(self, x: str, w: np.ndarray, name: str) -> str:
        """x @ w.T for a weight stored [out, in] (numpy order of a GGUF matrix)."""
        return self.op("MatMul", x, self.weight(name, np.asarray(w).T))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.const(list(shape)))

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.op("Slice", x, self.const([start]), self.const([end]), self.const([axis]))

    def gather(self, x: str, index: int, axis: int) -> str:
        return self.op("Gather", x, self.const(index), axis=axis)

    def unsqueeze(self, x: str, axis: int) -> str:
        return self.op("Unsqueeze", x, self.const([axis]))

    def concat(self, xs: Sequence[str], axis: int) -> str:
        return xs[0] if len(xs) == 1 else self.ops("Concat", xs, 1, axis=axis)[0]

    def reduce(self, op_type: str, x: str, axis: int, keepdims: int = 1) -> str:
        return self.op(op_type, x, self.const([axis]), keepdims=keepdims)

    def silu(self, x: str) -> str:
        return self.op("Mul", x, self.op("Sigmoid", x))

    def rms_norm(self, x: str, weight: np.ndarray | None, eps: float, name: str) -> str:
        """x / sqrt(mean(x², last axis) + eps) * weight."""
        ms = self.reduce("ReduceMean", self.op("Mul", x, x), -1)
        y = self.op("Div", x, self.op("Sqrt", self.op("Add", ms, self.const(eps, np.float32))))
        return y if weight is None else self.op("Mul", y, self.weight(name, weight))

    def l2_norm(self, x: str, eps: float) -> str:
        """x / sqrt(sum(x², last axis) + eps), as HF's l2norm."""
        ss = self.reduce("ReduceSum", self.op("Mul", x, x), -1)
        return self.op("Div", x, self.op("Sqrt", self.op("Add", ss, self.const(eps, np.float32))))


FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
