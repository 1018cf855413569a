"""The recognisers read one spelling each: the canonical Einsums, Mul decay and delta."""

from __future__ import annotations

import pytest

from gdnc.ir.graph import Graph
from gdnc.passes.canonicalize import canonicalize
from gdnc.passes.delta_net.recognize import contract, decay, delta, outer
from tests.passes.steps import step_model


def _by_op(g: Graph, op: str) -> list[str]:
    return [g.node(n).outputs[0] for n in g.topological_order() if g.node(n).op_type == op]


@pytest.mark.parametrize("gate_unsqueeze_first", [False, True])
def test_canonical_step_pieces_are_recognised(gate_unsqueeze_first: bool) -> None:
    model = step_model("reduce", gate_unsqueeze_first=gate_unsqueeze_first)
    g = model.graph
    canonicalize(g)
    u, upd, o = _by_op(g, "Einsum")
    (add,) = (g.node(n) for n in g.node_ids() if g.node(n).op_type == "Add")
    dec = add.inputs[0]
    assert contract(g, u) is not None and contract(g, u).state == dec and contract(g, u).axis == 2
    assert contract(g, u).vec == "k"
    assert contract(g, o).state == add.outputs[0] and contract(g, o).vec == "q"
    found = outer(g, upd)
    assert found is not None and found.row == "k" and delta(g, found.col) is not None
    assert delta(g, found.col).v == "v" and delta(g, found.col).u == u and delta(g, found.col).beta == "beta"
    dc = decay(g, dec)
    assert dc is not None and (dc.prev, dc.gate, dc.is_log, dc.key_axis) == ("S", "g", True, None)


def test_other_spellings_are_not_recognised_before_canonicalisation() -> None:
    g = step_model("reduce").graph
    (add,) = (g.node(n) for n in g.node_ids() if g.node(n).op_type == "Add")
    assert g.producer_node(add.inputs[1]).op_type == "Mul"
    assert outer(g, add.inputs[1]) is None
    assert all(contract(g, red) is None for red in _by_op(g, "ReduceSum"))


def test_exp_after_unsqueeze_is_not_a_log_gate_without_canonicalisation() -> None:
    g = step_model("einsum", gate_unsqueeze_first=True).graph
    (add,) = (g.node(n) for n in g.node_ids() if g.node(n).op_type == "Add")
    assert decay(g, add.inputs[0]) is None
    canonicalize(g)
    dc = decay(g, add.inputs[0])
    assert dc is not None and dc.is_log and dc.gate == "g"
