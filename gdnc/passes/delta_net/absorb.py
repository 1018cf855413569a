"""Fold what surrounds a fused node into its attributes: a constant q scale."""

from __future__ import annotations

from dataclasses import dataclass

from gdnc import fused_op
from gdnc.fused_op import GdnAttrs
from gdnc.ir.graph import Graph, make_attrs
from gdnc.passes.patterns import ONNX_DOMAINS, scalar_const

# ops that commute with multiplying every element by a scalar
_LAYOUT_OPS = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Expand")


@dataclass(frozen=True)
class AbsorbQScale:
    """``GatedDeltaNet(q = layout(Mul(x, c) | Div(x, c)))`` -> ``GatedDeltaNet(layout(x), scale*c)``."""

    name: str = "absorb-q-scale"
    ops: tuple[str, ...] = (fused_op.OP_TYPE,)

    def apply(self, g: Graph, nid: int) -> bool:
        node = g.node(nid)
        if node.domain != fused_op.DOMAIN:
            return False
        reader, index, value = nid, 0, node.inputs[0]
        while True:
            if len(g.consumers(value)) != 1 or g.is_graph_output(value):
                return False
            src_id = g.producer(value)
            if src_id is None:
                return False
            src = g.node(src_id)
            if src.domain not in ONNX_DOMAINS:
                return False
            if src.op_type in _LAYOUT_OPS:
                reader, index, value = src_id, 0, src.inputs[0]
                continue
            if src.op_type in ("Mul", "Div"):
                break
            return False
        x, c = src.inputs
        factor = scalar_const(g, c)
        if factor is None and src.op_type == "Mul":
            x, c = c, x
            factor = scalar_const(g, c)
        if factor is None or factor == 0.0:
            return False
        scale = GdnAttrs.from_onnx({k: node.attr(k) for k in node.attrs}).scale
        if scale is None:
            return False
        scale = scale * factor if src.op_type == "Mul" else scale / factor
        node.attrs.update(make_attrs(scale=scale))
        g.set_input(reader, index, x)
        return True
