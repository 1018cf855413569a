"""A GGUF model's weights in its ONNX export, each in its type's form (``onnx_weight_forms``):
the graph's weight inputs become the parts the forms store and the nodes that read them; the
parts' values are made from the file's bytes one at a time, while the ONNX file is written
(``gdnc.ir.to_onnx.save_onnx(..., bound=...)``), never all at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np

from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.builder import GraphBuilder
from gdnc.ir.graph import Graph, Model, Value
from gdnc.models.gguf_weights import weight_inputs
from gdnc.models.onnx_weight_forms import FORMS, MS_DOMAIN, Dense, Form, Part, Stored
from gdnc.passes.packed_weights import embedding_reads, linear_reads, remove_if_unread

CHUNK_BYTES = 1 << 22  # file bytes converted at a time into a part
IR_VERSION_OF_OPSET_21 = 10

Produce = Callable[[], np.ndarray]


def store_weights(f: GgufFile, model: Model) -> dict[str, Produce]:
    """Rewrite each weight input of ``model`` (``weight_inputs``: a tensor of ``f``) into its
    type's form, in place: its parts become graph inputs of their ONNX types, a 2-D 4-bit
    matrix's ``MatMul(x, Transpose(W))`` reads become its ``linear`` nodes, a 2-D tensor's rows
    read by ``Gather`` (an embedding) are made from the parts' gathered rows, and any other
    read gets the ``dense`` nodes, which make the float32 tensor under the weight's name (an F32
    tensor stays the input it is). The default opset and the IR version are raised, and
    com.microsoft imported, as far as the nodes added need. Returns each part's values (a
    function making them, for ``save_onnx(bound=...)``)."""
    g = model.graph
    bound: dict[str, Produce] = {}
    for name in weight_inputs(f, g):
        _, qtype, shape = f.raw(name)
        form = FORMS[qtype]
        parts = form.parts(shape)
        bound.update({name + p.suffix: partial(make_part, f, name, p) for p in parts})
        _read_through(model, form, name, parts, shape)
    return bound


def _read_through(model: Model, form: Form, name: str, parts: list[Part], shape: tuple[int, ...]) -> None:
    """Replace input ``name`` by ``parts`` and make its readers read them (``store_weights``);
    nothing for a form whose one part is the tensor."""
    if form.dense is None:
        return
    g = model.graph
    _replace_input(g, name, parts)
    stored = Stored({p.suffix: name + p.suffix for p in parts}, shape)
    if form.linear is not None and len(shape) == 2:
        for transpose, matmul in linear_reads(g, name):
            node, position = g.node(matmul), g.position(matmul)
            g.remove_node(matmul)
            form.linear(_builder(g, name, position), stored, node.inputs[0], node.outputs[0])
            remove_if_unread(g, transpose)
            model.opset_imports.setdefault(MS_DOMAIN, 1)
    if len(shape) == 2:
        for gather in embedding_reads(g, name):
            _read_rows(g, form.dense, stored, gather)
    readers = g.consumers(name)
    if readers:
        form.dense(_builder(g, name, min(g.position(r) for r in readers)), stored, name)
    if form.opset > model.opset(""):
        model.opset_imports[""] = form.opset
        model.ir_version = max(model.ir_version, IR_VERSION_OF_OPSET_21)


def _read_rows(g: Graph, dense: Dense, stored: Stored, gather: int) -> None:
    """``Gather(W, ids, axis=0)`` (ids of rank 1) made from the gathered rows of each part: the
    rows of a 2-D tensor are rows of its parts (blocks run along rows), so only the rows read
    are ever made float32."""
    node = g.node(gather)
    ids = node.inputs[1]
    if len(g.value(ids).shape or ()) != 1:
        return
    position = g.position(gather)
    g.remove_node(gather)
    e = _builder(g, node.inputs[0], position)
    rows = {suffix: e.op("Gather", part, ids, axis=0) for suffix, part in stored.names.items()}
    dense(e, Stored(rows, (-1, stored.shape[-1])), node.outputs[0])


def _replace_input(g: Graph, name: str, parts: list[Part]) -> None:
    at = g.inputs.index(name)
    g.inputs[at:at + 1] = [name + p.suffix for p in parts]
    for p in parts:
        g.values[name + p.suffix] = Value(name + p.suffix, p.dtype, p.shape)


def _builder(g: Graph, name: str, position: float) -> GraphBuilder:
    return GraphBuilder(g, position=position, prefix=f"{name}.", const_hint=f"{name}.const")


def make_part(f: GgufFile, name: str, part: Part) -> np.ndarray:
    """The values of ``part`` of tensor ``name`` of ``f``: made ``CHUNK_BYTES`` of the file at a
    time into one new array of ``part.shape`` (a view of the file's bytes for a ``view`` part)."""
    raw, _, shape = f.raw(name)
    rows = raw.reshape(math.prod(shape[:-1]), -1)
    if part.view:
        return part.make(rows).reshape(part.shape)
    step = max(1, CHUNK_BYTES // rows.shape[1])
    first = part.make(rows[:step])
    out = np.empty((rows.shape[0], first.shape[1]), first.dtype)
    out[:step] = first
    for start in range(step, rows.shape[0], step):
        out[start:start + step] = part.make(rows[start:start + step])
    return out.reshape(part.shape)
