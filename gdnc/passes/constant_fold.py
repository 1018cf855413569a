"""Constant folding: evaluate nodes whose inputs are all constant (and Shape of static shapes)."""

from __future__ import annotations

import numpy as np
import torch

from gdnc.errors import GdncError
from gdnc.ir.graph import Graph, Model
from gdnc.passes.patterns import ONNX_DOMAINS, static_shape
from gdnc.runtime.node_eval import eval_node

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
            if arrays is None:
                continue
            try:
                tensors = [None if a is None else torch.from_numpy(np.array(a)) for a in arrays]
                values = [t.numpy() for t in eval_node(node, tensors, model.opset(node.domain))]
            except (GdncError, RuntimeError, ValueError, TypeError, IndexError):
                continue
        if any(v.size > MAX_FOLDED_ELEMENTS for v in values):
            continue
        outputs = list(node.outputs)
        g.remove_node(nid)
        for name, value in zip(outputs, values):
            if name:
                g.add_initializer(name, value)
        folded += 1
    return folded


def _shape_value(node, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    start, end = node.attr("start", 0), node.attr("end", None)
    return np.array(shape[start:end], dtype=np.int64)
