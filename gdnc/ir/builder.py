"""``GraphBuilder``: the one way passes and model builders write nodes into the IR.

A builder appends nodes to one ``Graph``: every output gets a fresh name (``Graph.fresh_name``
of ``prefix + hint``) unless given, constants are shared initializers (or ``Constant`` nodes
where a graph cannot hold initializers: function bodies, subgraphs), and every node lands at
``position`` (None: after all; a pass passes the position of the node it replaces, so the
new nodes keep its place in the order). Op helpers follow ``opset``'s conventions: axes of
Squeeze/Unsqueeze/Reduce*, Split sizes and Slice bounds are inputs (opset 18); below 13
Squeeze/Unsqueeze take an ``axes`` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import AttributeProto, TensorProto, helper

from gdnc.ir.graph import Attr, Graph, Model, Node, Shape, Value, make_attrs

OPSET = 18
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
# the first default-domain opset where an op reads its axes from an input (else 18)
_AXES_INPUT_SINCE = {"Squeeze": 13, "Unsqueeze": 13, "ReduceSum": 13}


class GraphBuilder:
    """Appends nodes to ``graph``; every emitting method returns the output name(s).

    ``float_type`` is the ONNX elem type of float constants made by the norm helpers (and of
    ``float_const``); ``const_hint`` names the constants; ``const_nodes`` makes constants
    ``Constant`` nodes instead of initializers.
    """

    def __init__(self, graph: Graph, *, opset: int = OPSET, position: float | None = None,
                 prefix: str = "", const_hint: str = "const", const_nodes: bool = False,
                 float_type: int = FLOAT) -> None:
        self.graph, self.opset, self.position = graph, opset, position
        self.prefix, self.const_hint, self.const_nodes = prefix, const_hint, const_nodes
        self.float_type = float_type
        self._namer = graph  # the graph handing out names (the outermost one, for subgraphs)

    @classmethod
    def new(cls, name: str) -> GraphBuilder:
        """A builder of a new empty graph called ``name``."""
        return cls(Graph(name))

    def sub(self, name: str) -> GraphBuilder:
        """A builder of a new subgraph ``name`` (a Scan/Loop body, an If branch) to pass as a
        GRAPH attribute: its names come from this builder's graph, so none shadows a name of
        an enclosing scope, and its constants are ``Constant`` nodes."""
        sub = GraphBuilder(Graph(name), opset=self.opset, prefix=self.prefix, const_hint=self.const_hint,
                           const_nodes=True, float_type=self.float_type)
        sub._namer = self._namer
        return sub

    def model(self) -> Model:
        return Model(self.graph, opset_imports={"": self.opset}, ir_version=9)

    # ------------------------------------------------------------------ names and types
    def fresh(self, hint: str) -> str:
        """A name used nowhere in the graph (and its enclosing graphs) yet."""
        return self._namer.fresh_name(hint)

    def typed(self, value: str, dtype: int, shape: Shape | None = None) -> str:
        """Record ``value``'s elem type and shape (None: rank unknown); returns ``value``."""
        val = self.graph.value(value)
        val.dtype, val.shape = dtype, shape
        return value

    def input(self, name: str, dtype: int = 0, shape: Sequence[int | str | None] | None = None) -> str:
        """Declare graph input ``name`` (dtype 0 / shape None: unknown)."""
        self.graph.inputs.append(name)
        self.graph.values[name] = Value(name, dtype, None if shape is None else tuple(shape))
        return name

    def output(self, value: str, name: str, first: bool = False) -> str:
        """Expose ``value`` as graph output ``name`` (through an Identity), last or first."""
        self.op("Identity", value, out=name)
        self.graph.outputs.insert(0 if first else len(self.graph.outputs), name)
        return name

    def set_outputs(self, values: Sequence[str], dtypes: Sequence[int]) -> None:
        """Make ``values`` the graph's outputs, of elem types ``dtypes`` (shapes unknown)."""
        self.graph.outputs = list(values)
        for value, dtype in zip(values, dtypes, strict=True):
            self.typed(value, dtype)

    # ------------------------------------------------------------------ constants
    def const(self, value: object, dtype: type | np.dtype = np.int64, hint: str | None = None) -> str:
        """A constant tensor of ``value`` (int64 unless ``dtype``), named after ``hint``."""
        array = np.asarray(value, dtype=dtype)
        if self.const_nodes:
            return self.op("Constant", value=array, hint=hint or self.const_hint)
        return self.graph.constant(array, hint or self.const_hint)

    def float_const(self, value: object) -> str:
        """A constant of the builder's ``float_type``."""
        return self.const(value, helper.tensor_dtype_to_np_dtype(self.float_type))

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float32 initializer ``name`` (uniquified if taken)."""
        return self.graph.add_initializer(name, np.ascontiguousarray(array, dtype=np.float32))

    # ------------------------------------------------------------------ nodes
    def ops(self, op_type: str, inputs: Sequence[str], n_out: int = 1, *,
            outputs: Sequence[str] | None = None, hint: str | None = None, domain: str = "",
            name: str = "", **attrs: object) -> list[str]:
        """Emit one node; its outputs are ``outputs`` or ``n_out`` fresh names after ``hint``
        (default: the lower-case op type). Attribute values: python values, numpy arrays,
        ``Graph`` (a subgraph) or a ready ``Attr`` (e.g. a reference to a function attribute)."""
        if outputs is None:
            base = f"{self.prefix}{hint or op_type.lower()}"
            outputs = [self.fresh(base) for _ in range(n_out)]
        self.add(Node(op_type, list(inputs), list(outputs), domain=domain, name=name, attrs=_attrs(attrs)))
        return list(outputs)

    def add(self, node: Node) -> int:
        """Insert a ready ``node`` (e.g. a contract's ``fused_node``) at the builder's position;
        its id."""
        return self.graph.add_node(node, self.position)

    def op(self, op_type: str, *inputs: str, out: str | None = None, hint: str | None = None,
           domain: str = "", name: str = "", **attrs: object) -> str:
        """Emit a one-output node; its output is ``out`` or a fresh name."""
        outputs = None if out is None else [out]
        return self.ops(op_type, inputs, 1, outputs=outputs, hint=hint, domain=domain, name=name,
                        **attrs)[0]

    # ------------------------------------------------------------------ op helpers
    def _axes_input(self, op_type: str) -> bool:
        """Whether ``op_type`` reads its axes from an input (else an attribute) at ``opset``."""
        return self.opset >= _AXES_INPUT_SINCE.get(op_type, 18)

    def unsqueeze(self, x: str, axis: int) -> str:
        """``x`` with a new dim of size 1 at ``axis``; typed when ``x``'s type is known."""
        if self._axes_input("Unsqueeze"):
            out = self.op("Unsqueeze", x, self.const([axis]))
        else:
            out = self.op("Unsqueeze", x, axes=[axis])
        shape = self._shape(x)
        if shape is not None:
            at = axis if axis >= 0 else axis + len(shape) + 1
            self.typed(out, self.graph.value(x).dtype, (*shape[:at], 1, *shape[at:]))
        elif self.graph.value(x).dtype:
            self.typed(out, self.graph.value(x).dtype)
        return out

    def squeeze(self, x: str, axes: Sequence[int], out: str | None = None) -> str:
        if self._axes_input("Squeeze"):
            return self.op("Squeeze", x, self.const(list(axes)), out=out)
        return self.op("Squeeze", x, out=out, axes=list(axes))

    def stack(self, xs: Sequence[str], axis: int, hint: str | None = None) -> str:
        """Concat of ``xs`` each unsqueezed at ``axis`` (a Concat even for one); typed from
        the first input."""
        parts = [self.unsqueeze(x, axis) for x in xs]
        out = self.op("Concat", *parts, hint=hint, axis=axis)
        first = self.graph.value(parts[0])
        shape = first.shape
        at = axis if axis >= 0 else axis + (len(shape) if shape is not None else 0)
        self.typed(out, first.dtype, None if shape is None else (*shape[:at], len(parts), *shape[at + 1:]))
        return out

    def concat(self, xs: Sequence[str], axis: int) -> str:
        """Concat of ``xs`` along ``axis``; a single input is returned as is."""
        return xs[0] if len(xs) == 1 else self.op("Concat", *xs, axis=axis)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.const(list(shape)))

    def slice(self, x: str, axis: int, start: int, end: int) -> str:
        return self.op("Slice", x, self.const([start]), self.const([end]), self.const([axis]))

    def gather(self, x: str, index: int, axis: int) -> str:
        """``x`` at the constant scalar ``index`` of ``axis`` (that dim dropped)."""
        return self.op("Gather", x, self.const(index), axis=axis)

    def reduce(self, op_type: str, x: str, axis: int, keepdims: int = 1) -> str:
        if self._axes_input(op_type):
            return self.op(op_type, x, self.const([axis]), keepdims=keepdims)
        return self.op(op_type, x, axes=[axis], keepdims=keepdims)

    def matmul_t(self, x: str, w: np.ndarray, name: str) -> str:
        """x @ w.T for a weight stored [out, in] (numpy order of a GGUF matrix)."""
        return self.op("MatMul", x, self.weight(name, np.asarray(w).T))

    def linear(self, x: str, w: str, rank: int = 2) -> str:
        """x @ W^T for a weight value ``w`` of ``rank`` stored [..., out, in] (numpy order of a
        GGUF matrix), spelled ``MatMul(x, Transpose(w))`` (rank 3: a stack of matrices, the
        result [n, ..., out])."""
        perm = [*range(rank - 2), rank - 1, rank - 2]
        return self.op("MatMul", x, self.op("Transpose", w, perm=perm))

    def silu(self, x: str) -> str:
        return self.op("Mul", x, self.op("Sigmoid", x))

    def rms_norm(self, x: str, weight: str | np.ndarray | None, eps: float, name: str) -> str:
        """x / sqrt(mean(x², last axis) + eps) * weight (a value name, or an array made the
        initializer ``name``)."""
        ms = self.reduce("ReduceMean", self.op("Mul", x, x), -1)
        y = self.op("Div", x, self.op("Sqrt", self.op("Add", ms, self.float_const(eps))))
        if weight is None:
            return y
        return self.op("Mul", y, weight if isinstance(weight, str) else self.weight(name, weight))

    def l2_norm(self, x: str, eps: float) -> str:
        """x / sqrt(sum(x², last axis) + eps), as HF's l2norm."""
        ss = self.reduce("ReduceSum", self.op("Mul", x, x), -1)
        return self.op("Div", x, self.op("Sqrt", self.op("Add", ss, self.float_const(eps))))

    def _shape(self, x: str) -> Shape | None:
        const = self.graph.const_value(x)
        return tuple(const.shape) if const is not None else self.graph.value(x).shape


def _attrs(values: dict[str, object]) -> dict[str, Attr]:
    out: dict[str, Attr] = {}
    for key, val in values.items():
        if isinstance(val, Attr):
            out[key] = val
        elif isinstance(val, Graph):
            out[key] = Attr(AttributeProto.GRAPH, val)
        else:
            out.update(make_attrs(**{key: val}))
    return out
