"""Constant folding: evaluate nodes whose inputs are all constant (and Shape of static shapes)."""

from __future__ import annotations

import math

import numpy as np

from gdnc.errors import GdncError
from gdnc.ir.graph import Graph, Model
from gdnc.opset.node_eval import eval_node
from gdnc.opset.onnx_ops.dtypes import array_from_tensor, tensor_from_array
from gdnc.opset.onnx_ops.shape_ops import range_length
from gdnc.passes.patterns import ONNX_DOMAINS, static_shape

MAX_FOLDED_ELEMENTS = 1 << 16
_NEVER_FOLD = frozenset({"Constant", "RandomNormal", "RandomUniform", "RandomNormalLike",
                         "RandomUniformLike", "Multinomial", "Bernoulli"})


def _const_inputs(g: Graph, names: list[str]) -> list[np.ndarray | None] | None:
    out: list[np.ndarray | None] = []
    for name in names:
        if not name:
            out.append(None)
            continue
        arr = g.const_value(name)
        if arr is None:
            return None
        out.append(arr)
    return out


def fold_constants(model: Model) -> int:
    """Replace constant-valued node outputs by initializers; returns the number folded."""
    g = model.graph
    folded = 0
    for nid in g.topological_order():
        node = g.node(nid)
        if node.domain not in ONNX_DOMAINS or node.op_type in _NEVER_FOLD or node.attrs_have_graph():
            continue
        if any(g.is_graph_output(o) for o in node.outputs):
            continue
        if node.op_type in ("Shape", "Size"):
            shape = static_shape(g, node.inputs[0])
            if shape is None:
                continue
            values = [_shape_value(node, shape)]
        else:
            arrays = _const_inputs(g, node.inputs)
            if arrays is None or _output_elements(g, node, arrays) > MAX_FOLDED_ELEMENTS:
                continue
            try:
                tensors = [None if a is None else tensor_from_array(a) for a in arrays]
                values = [array_from_tensor(t) for t in eval_node(node, tensors, model.opset(node.domain))]
            except (GdncError, RuntimeError, ValueError, TypeError, IndexError, ArithmeticError):
                continue  # bad values: left to the runtime, which names the node
        if any(v.size > MAX_FOLDED_ELEMENTS for v in values):
            continue
        outputs = list(node.outputs)
        g.remove_node(nid)
        for name, value in zip(outputs, values):
            if name:
                g.add_initializer(name, value)
        folded += 1
    return folded


def _output_elements(g: Graph, node, arrays: list[np.ndarray | None]) -> int:
    """The largest output's element count as far as it is known BEFORE evaluating the node:
    from inferred shapes, and from the size-giving input of the ops that make large tensors
    from small constants (so nothing is allocated from a hostile shape)."""
    known = [math.prod(s) for s in (static_shape(g, o) for o in node.outputs if o) if s is not None]
    op, x = node.op_type, arrays
    try:
        if op == "ConstantOfShape" and x[0] is not None:
            known.append(math.prod(int(d) for d in x[0].reshape(-1)))
        elif op == "Expand" and x[0] is not None and x[1] is not None:
            known.append(math.prod(max(int(d), 1) for d in x[1].reshape(-1)) * max(x[0].size, 1))
        elif op == "Tile" and x[0] is not None and x[1] is not None:
            known.append(x[0].size * math.prod(int(d) for d in x[1].reshape(-1)))
        elif op == "Range":
            known.append(range_length(*(a.reshape(-1)[0].item() for a in x)))  # type: ignore[union-attr]
        elif op == "OneHot" and x[0] is not None and x[1] is not None:
            known.append(x[0].size * int(x[1].reshape(-1)[0]))
    except (GdncError, TypeError, ValueError, ArithmeticError, IndexError):
        return MAX_FOLDED_ELEMENTS + 1  # nonsense sizes: leave the node to the runtime's checks
    return max(known, default=0)


def _shape_value(node, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    start, end = node.attr("start", 0), node.attr("end", None)
    return np.array(shape[start:end], dtype=np.int64)
