"""Fold what surrounds a fused node into its attributes.

- a constant scale on q (``Mul``/``Div`` by a scalar) -> ``scale``;
- l2-normalisation of both q and k (HF spelling, eps L2NORM_EPS inside the sqrt) -> ``qk_l2norm``;
- a repeat of the key heads to the value heads (repeat_interleave or tile) -> ``head_map``.

Each walks up from the node's input through single-reader layout ops that commute with the
folded operation, so the ops removed are used by nothing else. Where a rule finds the op it
folds but cannot fold it (a per-element scale, one of q and k normalised, repeats that differ)
it says why with a ``Miss`` naming the fused node and the value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gdnc.ir.graph import Graph, Node
from gdnc.opset.gated_delta_net import (
    INPUT_INDEX,
    L2NORM_EPS,
    OP_TYPE,
    attrs_of,
    input_of,
    is_fused,
    set_attr,
    set_input_of,
)
from gdnc.passes.data_movement import movement_marker, movement_region
from gdnc.passes.patterns import ONNX_DOMAINS, axes_of, norm_axes, producer, rank, scalar_const, static_shape
from gdnc.passes.rewrite import Miss

# ops that commute with multiplying every element by a scalar / normalising the last axis
_LAYOUT_OPS = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile")


def _fused(g: Graph, nid: int) -> Node | None:
    node = g.node(nid)
    return node if is_fused(node) else None


def _keeps_last_axis(g: Graph, node: Node) -> bool:
    if node.op_type == "Transpose":
        perm = node.attr("perm")
        return perm is not None and perm[-1] == len(perm) - 1
    before, after = static_shape(g, node.inputs[0]), static_shape(g, node.outputs[0])
    return before is not None and after is not None and before[-1] == after[-1]


def _upstream(g: Graph, nid: int, index: int, last_axis: bool) -> tuple[int, int, Node] | None:
    """Walk from input ``index`` of node ``nid`` up through private layout ops.

    Returns (reader id, input index, first non-layout producer) or None.
    """
    reader, value = nid, g.node(nid).inputs[index]
    while True:
        if len(g.consumers(value)) != 1 or g.is_graph_output(value):
            return None
        src_id = g.producer(value)
        if src_id is None:
            return None
        src = g.node(src_id)
        if src.domain not in ONNX_DOMAINS:
            return None
        if src.op_type in _LAYOUT_OPS and (not last_axis or _keeps_last_axis(g, src)):
            reader, index, value = src_id, 0, src.inputs[0]
            continue
        return reader, index, src


@dataclass(frozen=True)
class AbsorbQScale:
    """``q = layout(Mul(x, c) | Div(x, c))`` -> ``q = layout(x)``, ``scale *= c`` (or ``/= c``)."""

    name: str = "absorb-q-scale"
    ops: tuple[str, ...] = (OP_TYPE,)

    def apply(self, g: Graph, nid: int) -> bool | Miss:
        node = _fused(g, nid)
        found = None if node is None else _upstream(g, nid, INPUT_INDEX["q"], last_axis=False)
        if node is None or found is None or found[2].op_type not in ("Mul", "Div"):
            return False
        reader, index, src = found
        x, c = src.inputs
        factor = scalar_const(g, c)
        if factor is None and src.op_type == "Mul":
            x, c = c, x
            factor = scalar_const(g, c)
        scale = attrs_of(node).scale  # type: ignore[arg-type]
        if scale is None:
            return False
        scalers = src.inputs[1:] if src.op_type == "Div" else src.inputs
        if factor is None and any(g.const_value(i) is not None for i in scalers):
            return Miss(self.name, f"{src.outputs[0]}: q is scaled by a constant that is not one number",
                        value=src.outputs[0], node=node.name)
        if factor is None or factor == 0.0:
            return False
        set_attr(node, "scale", scale * factor if src.op_type == "Mul" else scale / factor)
        g.set_input(reader, index, x)
        return True


def _l2norm_source(g: Graph, node: Node) -> str | None:
    """x when ``node`` computes x / sqrt(sum(x*x, -1) + L2NORM_EPS) (Mul by Reciprocal, Div by Sqrt)."""
    if node.op_type == "Div":
        x, sqrt = node.inputs[0], producer(g, node.inputs[1], "Sqrt")
    elif node.op_type == "Mul":
        for x, inv in (node.inputs, node.inputs[::-1]):
            recip = producer(g, inv, "Reciprocal")
            div = producer(g, inv, "Div")
            if recip is not None:
                sqrt = producer(g, recip.inputs[0], "Sqrt")
            elif div is not None and scalar_const(g, div.inputs[0]) == 1.0:
                sqrt = producer(g, div.inputs[1], "Sqrt")
            else:
                continue
            if sqrt is not None:
                break
        else:
            return None
    else:
        return None
    add = None if sqrt is None else producer(g, sqrt.inputs[0], "Add")
    if add is None:
        return None
    for s, eps in (add.inputs, add.inputs[::-1]):
        red = producer(g, s, "ReduceSum")
        value = scalar_const(g, eps)
        if red is None or value is None or not np.isclose(value, L2NORM_EPS, rtol=1e-3, atol=0):
            continue
        r = rank(g, red.inputs[0])
        sq = producer(g, red.inputs[0], "Mul", "Pow")
        if r is None or sq is None or red.attr("keepdims", 1) != 1:
            continue
        if norm_axes(axes_of(g, red) or [], r) != [r - 1]:
            continue
        squares_x = sq.inputs == [x, x] if sq.op_type == "Mul" else (
            sq.inputs[0] == x and scalar_const(g, sq.inputs[1]) == 2.0)
        if squares_x:
            return x
    return None


@dataclass(frozen=True)
class AbsorbL2Norm:
    """``q = layout(l2norm(x))`` and ``k = layout(l2norm(y))`` -> ``qk_l2norm = 1``."""

    name: str = "absorb-qk-l2norm"
    ops: tuple[str, ...] = (OP_TYPE,)

    def apply(self, g: Graph, nid: int) -> bool | Miss:
        node = _fused(g, nid)
        if node is None or attrs_of(node).qk_l2norm:
            return False
        found = {}
        for which in ("q", "k"):
            index = INPUT_INDEX[which]
            up = _upstream(g, nid, index, last_axis=True)
            source = None if up is None else _l2norm_source(g, up[2])
            if up is not None and source is not None:
                found[which] = (up[0], up[1], source)
        if len(found) == 1:
            ((which, (_, _, source)),) = found.items()
            other = "k" if which == "q" else "q"
            return Miss(self.name, f"{source}: {which} is l2-normalised but {other} is not",
                        value=source, node=node.name)
        if not found:
            return False
        for reader, index, source in found.values():
            g.set_input(reader, index, source)
        set_attr(node, "qk_l2norm", 1)
        return True


def _head_repeat(g: Graph, value: str, opset: int) -> tuple[str, str] | None:
    """(x, "interleave"|"tile") when ``value`` [.., HV, K] repeats the heads of x [.., H, K]."""
    region = movement_region(g, value)
    if region is None:
        return None
    src, out = static_shape(g, region.source), static_shape(g, value)
    if src is None or out is None or len(src) != len(out) or src[:-2] != out[:-2] or src[-1] != out[-1]:
        return None
    if src[-2] >= out[-2] or out[-2] % src[-2]:
        return None
    marker = movement_marker(g, region, value, opset)
    if marker is None:
        return None
    index = np.arange(int(np.prod(src))).reshape(src)
    reps = out[-2] // src[-2]
    if np.array_equal(marker, np.repeat(index, reps, axis=-2)):
        return region.source, "interleave"
    if np.array_equal(marker, np.concatenate([index] * reps, axis=-2)):
        return region.source, "tile"
    return None


@dataclass(frozen=True)
class AbsorbHeadRepeat:
    """``q, k = repeat_heads(x), repeat_heads(y)`` -> ``q, k = x, y`` with ``head_map`` set."""

    name: str = "absorb-head-repeat"
    ops: tuple[str, ...] = (OP_TYPE,)
    opset: int = 18

    def apply(self, g: Graph, nid: int) -> bool | Miss:
        node = _fused(g, nid)
        if node is None:
            return False
        shapes = [static_shape(g, input_of(node, name)) for name in ("q", "v")]
        if None in shapes or shapes[0][-2] != shapes[1][-2]:  # type: ignore[index]
            return False  # already grouped, or shapes unknown
        q, k = (_head_repeat(g, input_of(node, name), self.opset) for name in ("q", "k"))
        if q is None and k is None:
            return False
        if q is None or k is None:
            value = input_of(node, "k" if q is None else "q")
            return Miss(self.name, f"{value}: {'k' if q is None else 'q'} repeats its heads, "
                                   f"{'q' if q is None else 'k'} does not", value=value, node=node.name)
        if q[1] != k[1] or static_shape(g, q[0]) != static_shape(g, k[0]):
            return Miss(self.name, f"{input_of(node, 'q')}: q and k repeat their heads differently "
                                   f"({q[1]} of {q[0]}, {k[1]} of {k[0]})",
                        value=input_of(node, "q"), node=node.name)
        set_input_of(g, nid, "q", q[0])
        set_input_of(g, nid, "k", k[0])
        set_attr(node, "head_map", q[1])
        return True
