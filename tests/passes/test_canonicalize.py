"""The canonicalize stage: every contraction spelling of a step becomes the same Einsums, unary
ops move before shape-only ops, and nothing else is touched; numerics stay equal."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Graph, Model
from gdnc.ir.to_onnx import model_to_proto
from gdnc.passes.canonicalize import canonicalize, contract_equation, outer_equation
from gdnc.passes.shapes import infer_shapes
from gdnc.runtime.executor import Executor
from tests.passes.steps import SPELLINGS, step_feeds, step_model


def _ops(g: Graph) -> list[tuple[str, object]]:
    return [(g.node(n).op_type, g.node(n).attr("equation")) for n in g.topological_order()]


def _run(model: Model, feeds: dict) -> list[np.ndarray]:
    return [t.numpy() for t in Executor(model).run(feeds).values()]


def _ort(model: Model, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model_to_proto(model).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_becomes_the_same_einsums(spelling: str) -> None:
    model, feeds = step_model(spelling), step_feeds(seed=1)
    before = _run(model, feeds)
    canonicalize(model.graph)
    reference = step_model("einsum")
    canonicalize(reference.graph)
    assert _ops(model.graph) == _ops(reference.graph)
    assert [eq for op, eq in _ops(model.graph) if op == "Einsum"] == [
        contract_equation(4, 2), outer_equation(4), contract_equation(4, 2)]
    assert not {"MatMul", "ReduceSum", "Squeeze"} & set(model.graph.op_histogram())
    for got, ort_got, want in zip(_run(model, feeds), _ort(model, feeds), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ort_got, want, rtol=1e-5, atol=1e-6)


def test_value_axis_contraction_keeps_its_axis() -> None:
    model = step_model(u_axis=-1, value_dim=4)
    canonicalize(model.graph)
    assert [eq for op, eq in _ops(model.graph) if op == "Einsum"] == [
        contract_equation(4, 3), outer_equation(4), contract_equation(4, 2)]


def _gate_model(unsqueeze_first: bool) -> Model:
    """The per-key decay of token 1, ``g[:, 1][..., None].exp()`` (Kimi/KDA) or
    ``g[:, 1].exp()[..., None]``, times a state."""
    e = GraphBuilder.new("gate")
    g = e.input("g", FLOAT, [2, 3, 4])
    s = e.input("S", FLOAT, [2, 4, 5])
    g_t = e.gather(g, 1, axis=1)
    a = e.op("Exp", e.unsqueeze(g_t, -1)) if unsqueeze_first else e.unsqueeze(e.op("Exp", g_t), -1)
    e.output(e.op("Mul", s, a), "out")
    model = e.model()
    infer_shapes(model)
    return model


def test_exp_of_unsqueeze_of_gather_becomes_unsqueeze_of_exp() -> None:
    kimi, plain = _gate_model(True), _gate_model(False)
    feeds = {"g": np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32),
             "S": np.random.default_rng(3).standard_normal((2, 4, 5)).astype(np.float32)}
    before = _run(kimi, feeds)
    assert canonicalize(kimi.graph).fired == {"unary-before-shape-op": 1}
    assert canonicalize(plain.graph).fired == {}
    assert _ops(kimi.graph) == _ops(plain.graph) == [
        ("Gather", None), ("Exp", None), ("Unsqueeze", None), ("Mul", None), ("Identity", None)]
    np.testing.assert_allclose(_run(kimi, feeds)[0], before[0], rtol=1e-6)


def test_a_shape_op_read_twice_keeps_its_unary_op() -> None:
    e = GraphBuilder.new("twice")
    x = e.input("x", FLOAT, [3, 4])
    u = e.unsqueeze(x, 0)
    e.output(e.op("Exp", u), "a")
    e.output(e.op("Neg", u), "b")
    model = e.model()
    infer_shapes(model)
    assert canonicalize(model.graph).fired == {}


def test_unrelated_matmuls_and_reductions_are_left_alone() -> None:
    """An FFN MatMul and a ReduceSum(Mul) contraction outside any state update stay as they are."""
    e = GraphBuilder.new("ffn")
    x = e.input("x", FLOAT, [2, 3, 4])
    w = e.weight("w", np.ones((4, 4), np.float32))
    y = e.op("MatMul", x, w)
    z = e.reduce("ReduceSum", e.op("Mul", e.input("m", FLOAT, [2, 3, 4, 4]), e.unsqueeze(y, -1)), -2,
                 keepdims=0)
    e.output(z, "z")
    model = e.model()
    infer_shapes(model)
    before = _ops(model.graph)
    assert canonicalize(model.graph).fired == {}
    assert _ops(model.graph) == before


def test_a_broadcast_vector_is_not_rewritten() -> None:
    """k [1, H, K] against a state [B, H, K, V]: an Einsum would not broadcast, so no rewrite."""
    e = GraphBuilder.new("bcast")
    s = e.input("S", FLOAT, [2, 3, 4, 5])
    k = e.input("k", FLOAT, [1, 3, 4])
    d = e.input("d", FLOAT, [2, 3, 5])
    e.output(e.op("Add", s, e.op("Mul", e.unsqueeze(k, -1), e.unsqueeze(d, -2))), "S_new")
    model = e.model()
    infer_shapes(model)
    assert canonicalize(model.graph).fired == {}
