"""The absorb rules on a hand-built fused node: what they fold, and why they did not."""

from __future__ import annotations

import numpy as np

from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Graph, Node, make_attrs
from gdnc.opset import gated_delta_net as fused_op
from gdnc.opset.gated_delta_net import GdnAttrs
from gdnc.passes.delta_net import AbsorbHeadRepeat, AbsorbL2Norm, AbsorbQScale
from gdnc.passes.rewrite import Miss
from gdnc.passes.shapes import infer_shapes

T, H, K, V = 3, 2, 4, 4


def _fused(e: GraphBuilder, q: str, k: str, heads: int = H) -> int:
    """A GatedDeltaNet node reading q, k and fresh v [1, T, heads, V], g and beta [1, T, heads]."""
    v = e.input("v", FLOAT, [1, T, heads, V])
    g, beta = (e.input(n, FLOAT, [1, T, heads]) for n in ("g", "beta"))
    node = Node(fused_op.OP_TYPE, [q, k, v, g, beta], ["o", "state"], domain=fused_op.DOMAIN, name="gdn",
                attrs=make_attrs(**GdnAttrs(scale=1.0, state_layout="kv").to_onnx()))
    nid = e.graph.add_node(node)
    e.graph.outputs += ["o", "state"]
    model = e.model()
    model.opset_imports[fused_op.DOMAIN] = fused_op.OPSET_VERSION
    infer_shapes(model)
    return nid


def _qk(e: GraphBuilder) -> tuple[str, str]:
    return e.input("x", FLOAT, [1, T, H, K]), e.input("y", FLOAT, [1, T, H, K])


def test_a_scalar_scale_is_absorbed() -> None:
    e = GraphBuilder.new("scale")
    x, y = _qk(e)
    nid = _fused(e, e.op("Div", x, e.const(2.0, np.float32)), y)
    assert AbsorbQScale().apply(e.graph, nid) is True
    assert e.graph.node(nid).inputs[0] == "x" and e.graph.node(nid).attr("scale") == 0.5


def test_a_per_element_scale_is_a_miss() -> None:
    e = GraphBuilder.new("scale")
    x, y = _qk(e)
    q = e.op("Mul", x, e.weight("w", np.full(K, 0.5, np.float32)))
    nid = _fused(e, q, y)
    assert AbsorbQScale().apply(e.graph, nid) == Miss(
        "absorb-q-scale", f"{q}: q is scaled by a constant that is not one number", value=q, node="gdn")


def test_a_non_constant_factor_is_no_miss() -> None:
    e = GraphBuilder.new("scale")
    x, y = _qk(e)
    nid = _fused(e, e.op("Mul", x, y), y)
    assert AbsorbQScale().apply(e.graph, nid) is False


def test_l2norm_of_q_and_k_is_absorbed() -> None:
    e = GraphBuilder.new("l2")
    x, y = _qk(e)
    nid = _fused(e, e.l2_norm(x, 1e-6), e.l2_norm(y, 1e-6))
    assert AbsorbL2Norm().apply(e.graph, nid) is True
    assert e.graph.node(nid).inputs[:2] == ["x", "y"] and e.graph.node(nid).attr("qk_l2norm") == 1


def test_l2norm_of_q_alone_is_a_miss_naming_its_source() -> None:
    e = GraphBuilder.new("l2")
    x, y = _qk(e)
    nid = _fused(e, e.l2_norm(x, 1e-6), y)
    assert AbsorbL2Norm().apply(e.graph, nid) == Miss(
        "absorb-qk-l2norm", "x: q is l2-normalised but k is not", value="x", node="gdn")


def _repeat(e: GraphBuilder, x: str, how: str) -> str:
    """[1, T, H, K] -> [1, T, 2H, K], each head twice (interleave) or all heads twice (tile)."""
    if how == "tile":
        return e.concat([x, x], 2)
    grown = e.op("Expand", e.unsqueeze(x, 3), e.const([1, 1, 1, 2, 1]))
    return e.reshape(grown, [1, T, 2 * H, K])


def _grouped(q_how: str | None, k_how: str | None) -> tuple[Graph, int]:
    e = GraphBuilder.new("heads")
    x, y = _qk(e)
    q = x if q_how is None else _repeat(e, x, q_how)
    k = y if k_how is None else _repeat(e, y, k_how)
    return e.graph, _fused(e, q, k, heads=2 * H)


def test_a_head_repeat_of_q_and_k_is_absorbed() -> None:
    g, nid = _grouped("interleave", "interleave")
    assert AbsorbHeadRepeat().apply(g, nid) is True
    assert g.node(nid).inputs[:2] == ["x", "y"] and g.node(nid).attr("head_map") == "interleave"


def test_repeats_that_differ_are_a_miss() -> None:
    g, nid = _grouped("interleave", "tile")
    miss = AbsorbHeadRepeat().apply(g, nid)
    q = g.node(nid).inputs[0]
    assert miss == Miss("absorb-head-repeat", f"{q}: q and k repeat their heads differently "
                                              "(interleave of x, tile of y)", value=q, node="gdn")


def test_a_repeat_of_q_alone_is_a_miss() -> None:
    g, nid = _grouped("tile", None)
    q = g.node(nid).inputs[0]
    assert AbsorbHeadRepeat().apply(g, nid) == Miss(
        "absorb-head-repeat", f"{q}: q repeats its heads, k does not", value=q, node="gdn")
