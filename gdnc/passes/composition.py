"""Make a fused graph built for one batch composition serve every composition.

A graph built for one batch (N sequences of fixed token counts) and fused holds that batch's
layout in one place only: the ``cu_seqlens`` constant of each ``GatedDeltaNet`` node (every
other part reads the layout from index inputs). Lifting that constant to a graph input, and
the batch dims of the inputs to symbols, gives a graph valid for any batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from onnx import TensorProto

from gdnc.errors import RewriteError
from gdnc.ir.graph import Model, Value
from gdnc.opset.gated_delta_net import input_of, is_fused, set_input_of
from gdnc.passes.cleanup import dead_code_elimination
from gdnc.passes.shapes import infer_shapes

CU_SEQLENS = "cu_seqlens"


def lift_sequence_layout(model: Model, cu_seqlens: Sequence[int], batch_dims: Mapping[str, str]) -> int:
    """Every ``GatedDeltaNet`` node's ``cu_seqlens`` constant equal to ``cu_seqlens`` reads the
    new graph input ``cu_seqlens`` [N+1] instead; the leading dim of each input named in
    ``batch_dims`` becomes its symbol; inner shapes are inferred anew and the constants left
    unread removed (in place). Returns the number of nodes lifted; RewriteError when a node
    has another or no ``cu_seqlens``."""
    g = model.graph
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    nodes = [nid for nid, n in g.nodes() if is_fused(n)]
    for nid in nodes:
        given = input_of(g.node(nid), "cu_seqlens")
        value = g.const_value(given) if given else None
        if value is None or not np.array_equal(value, cu):
            raise RewriteError(f"node {g.node(nid).name}: not one multi-sequence GatedDeltaNet over "
                               f"the batch (cu_seqlens {value}, want {cu.tolist()})")
        set_input_of(g, nid, "cu_seqlens", CU_SEQLENS)
    g.inputs.append(CU_SEQLENS)
    g.values[CU_SEQLENS] = Value(CU_SEQLENS, TensorProto.INT64, ("N+1",))
    for name, symbol in batch_dims.items():
        v = g.values[name]
        if v.shape:
            v.shape = (symbol, *v.shape[1:])
    for name, v in g.values.items():  # inner shapes were the template batch's
        if name not in g.inputs and name not in g.outputs and name not in g.initializers:
            v.shape = None
    dead_code_elimination(g)
    infer_shapes(model)
    return len(nodes)
