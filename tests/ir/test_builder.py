"""GraphBuilder: fresh names, constants, positions, types, and graphs onnx accepts and runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.ir.graph import Graph, Node
from gdnc.ir.to_onnx import model_to_proto


def _run(b: GraphBuilder, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the model (float outputs) in onnxruntime, then check it with onnx, its outputs typed
    as they came out."""
    for name in b.graph.outputs:
        b.typed(name, FLOAT)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    proto = model_to_proto(b.model())
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = session.run(None, feeds)
    for name, out in zip(b.graph.outputs, outs, strict=True):
        b.typed(name, onnx.helper.np_dtype_to_tensor_dtype(out.dtype), out.shape)
    onnx.checker.check_model(model_to_proto(b.model()), full_check=True)
    return outs


def test_fresh_names_never_collide() -> None:
    rng = np.random.default_rng(0)
    g = Graph("g")
    taken = {"mul", "mul_1", "const", "x", "l_relu"}
    b = GraphBuilder(g)
    b.input("x", FLOAT, [2])
    g.add_node(Node("Neg", ["x"], ["mul"]))
    g.add_node(Node("Neg", ["x"], ["mul_1"]))
    g.add_initializer("const", np.zeros(1, np.float32))
    g.add_node(Node("Neg", ["x"], ["l_relu"]))
    names = []
    for _ in range(50):
        b.prefix = str(rng.choice(["", "l_"]))
        op = str(rng.choice(["Mul", "Relu", "Neg"]))
        names.append(b.op(op, "x", "x") if op == "Mul" else b.op(op, "x"))
        names.append(b.const(rng.standard_normal(3), np.float32))
        names.append(b.fresh(str(rng.choice(["mul", "x", "const"]))))
    assert len(set(names)) == len(names) and not set(names) & taken


def test_subgraph_names_shadow_no_enclosing_name() -> None:
    b = GraphBuilder.new("outer")
    x = b.input("x", FLOAT, [3])
    outer = [b.op("Neg", x), b.op("Neg", x)]
    sub = b.sub("branch")
    inner = [sub.op("Neg", x), sub.const([1.0], np.float32), sub.sub("deeper").op("Neg", x)]
    later = b.op("Neg", x)
    names = outer + inner + [later, x]
    assert len(set(names)) == len(names)
    assert sub.graph.node(sub.graph.producer(inner[1])).op_type == "Constant"  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "dtype"), [(3, np.int64), ([1, -2], np.int64), (0.5, np.float32),
                                              ([[1.5, 2.0]], np.float64)])
def test_constants_have_their_dtype_and_shape(value: object, dtype: type) -> None:
    b = GraphBuilder.new("c")
    name = b.const(value, dtype)
    want = np.asarray(value, dtype)
    got = b.graph.const_value(name)
    assert got is not None and got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    v = b.graph.values[name]
    assert v.dtype == onnx.helper.np_dtype_to_tensor_dtype(want.dtype) and v.shape == want.shape
    assert b.const(value, dtype) == name  # an identical constant is shared
    assert b.const(value, np.int32 if dtype is not np.int32 else np.int64) != name


def test_constant_nodes_and_float_type() -> None:
    b = GraphBuilder(Graph("f"), const_nodes=True, float_type=TensorProto.DOUBLE)
    name = b.float_const([0.25, 2.0])
    node = b.graph.producer_node(name)
    assert node is not None and node.op_type == "Constant" and not b.graph.initializers
    got = b.graph.const_value(name)
    assert got is not None and got.dtype == np.float64 and got.tolist() == [0.25, 2.0]


def test_helpers_make_a_valid_graph_that_computes_what_they_say() -> None:
    rng = np.random.default_rng(1)
    b = GraphBuilder.new("helpers")
    x = b.input("x", FLOAT, [4, 3, 5])
    idx = b.input("idx", INT64, [2])
    w = rng.standard_normal((6, 5)).astype(np.float32)
    norm_w = rng.standard_normal(5).astype(np.float32)
    b.output(b.matmul_t(x, w, "w"), "proj")
    b.output(b.rms_norm(x, norm_w, 1e-6, "norm"), "rms")
    b.output(b.l2_norm(b.silu(x), 1e-6), "l2")
    b.output(b.stack([b.gather(x, 0, 0), b.gather(x, 3, 0)], 1), "stacked")  # [3, 2, 5]
    b.output(b.concat([b.slice(x, 2, 1, 4), b.slice(x, 2, 0, 1)], 2), "rolled")
    b.output(b.reshape(b.squeeze(b.unsqueeze(x, -1), [3]), [12, 5]), "flat")
    b.output(b.reduce("ReduceMax", x, 1, keepdims=0), "max")
    b.output(b.op("Gather", x, idx, axis=0), "rows")
    top, where = b.ops("TopK", [x, b.const([2])], 2, axis=-1)
    b.output(top, "top")
    feeds = {"x": rng.standard_normal((4, 3, 5)).astype(np.float32), "idx": np.array([3, 1])}
    proj, rms, l2, stacked, rolled, flat, mx, rows, topv = _run(b, feeds)
    xv = feeds["x"]
    np.testing.assert_allclose(proj, xv @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rms, xv / np.sqrt((xv * xv).mean(-1, keepdims=True) + 1e-6) * norm_w,
                               rtol=1e-5, atol=1e-6)
    s = xv / (1 + np.exp(-xv))
    np.testing.assert_allclose(l2, s / np.sqrt((s * s).sum(-1, keepdims=True) + 1e-6), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stacked, np.stack([xv[0], xv[3]], 1))
    np.testing.assert_array_equal(rolled, np.concatenate([xv[:, :, 1:4], xv[:, :, :1]], 2))
    np.testing.assert_array_equal(flat, xv.reshape(12, 5))
    np.testing.assert_array_equal(mx, xv.max(1))
    np.testing.assert_array_equal(rows, xv[[3, 1]])
    np.testing.assert_array_equal(topv, -np.sort(-xv, -1)[..., :2])


def test_unsqueeze_and_stack_type_their_outputs() -> None:
    b = GraphBuilder.new("types")
    x = b.input("x", FLOAT, ["T", 4])
    u = b.unsqueeze(x, -1)
    assert (b.graph.values[u].dtype, b.graph.values[u].shape) == (FLOAT, ("T", 4, 1))
    s = b.stack([x, x, x], 1, hint="s")
    assert s.startswith("s") and b.graph.values[s].shape == ("T", 3, 4)
    assert b.graph.values[b.unsqueeze(b.op("Neg", x), 0)].shape is None  # unknown stays unknown
    assert b.typed(u, INT64, (1,)) == u and b.graph.values[u].shape == (1,)


def test_below_opset_13_axes_are_attributes() -> None:
    b = GraphBuilder(Graph("old"), opset=11)
    x = b.input("x", FLOAT, [2, 3])
    b.output(b.squeeze(b.unsqueeze(x, 0), [0]), "y")
    b.output(b.reduce("ReduceSum", x, 1), "s")
    nodes = [n for _, n in b.graph.nodes() if n.op_type != "Identity"]
    assert [len(n.inputs) for n in nodes] == [1, 1, 1] and all("axes" in n.attrs for n in nodes)
    xv = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    y, s = _run(b, {"x": xv})
    np.testing.assert_array_equal(y, xv)
    np.testing.assert_allclose(s, xv.sum(1, keepdims=True), rtol=1e-6)


def test_nodes_land_at_the_position_given() -> None:
    g = Graph("pos")
    g.inputs.append("x")
    first = g.add_node(Node("Neg", ["x"], ["a"]))
    g.add_node(Node("Exp", ["a"], ["b"]))
    b = GraphBuilder(g, position=g.position(first))
    c = b.op("Relu", "x", out="c", name="placed")
    assert c == "c"
    ready = b.add(Node("Sigmoid", ["x"], ["d"], name="ready"))
    order = [n.op_type for _, n in g.nodes()]
    assert order.index("Relu") < order.index("Exp") and order.index("Sigmoid") < order.index("Exp")
    assert g.node(ready).name == "ready" and g.producer("d") == ready


def test_subgraph_builders_make_a_loop_onnx_runs() -> None:
    """A Loop whose body holds an If: subgraph builders, constants as nodes, typed outputs."""
    b = GraphBuilder.new("loop")
    n = b.input("n", INT64, [])
    x = b.input("x", FLOAT, [3])
    body = b.sub("body")
    it, cond, acc = (body.fresh(h) for h in ("it", "cond", "acc"))
    even = body.op("Equal", body.op("Mod", it, body.const(2)), body.const(0))
    then, other = body.sub("then"), body.sub("else")
    then.set_outputs([then.op("Add", acc, x)], [FLOAT])
    other.set_outputs([other.op("Sub", acc, x)], [FLOAT])
    (step,) = body.ops("If", [even], 1, then_branch=then.graph, else_branch=other.graph)
    for name, dtype, shape in ((it, INT64, ()), (cond, TensorProto.BOOL, ()), (acc, FLOAT, None)):
        body.input(name, dtype, shape)
    body.set_outputs([body.op("Identity", cond), step], [TensorProto.BOOL, FLOAT])
    (out,) = b.ops("Loop", [n, "", b.const(np.zeros(3), np.float32)], 1, body=body.graph)
    b.output(out, "y")
    xv = np.random.default_rng(3).standard_normal(3).astype(np.float32)
    (y,) = _run(b, {"n": np.array(5), "x": xv})
    np.testing.assert_allclose(y, xv, rtol=1e-6)  # + - + - +
