"""match_step and find_chains on hand-built steps: what matches, and each miss with its value/node."""

from __future__ import annotations

import pytest

from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Graph
from gdnc.passes.canonicalize import canonicalize
from gdnc.passes.delta_net.chains import find_chains
from gdnc.passes.delta_net.steps import RULE, Step, match_step
from gdnc.passes.rewrite import Miss
from gdnc.passes.shapes import infer_shapes
from tests.passes.steps import SPELLINGS, step_model


def _add(g: Graph) -> int:
    (nid,) = (n for n in g.node_ids() if g.node(n).op_type == "Add")
    return nid


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_canonical_step_matches(spelling: str) -> None:
    g = step_model(spelling).graph
    canonicalize(g)
    step = match_step(g, _add(g))
    assert isinstance(step, Step)
    assert (step.prev, step.q, step.k, step.v, step.gate, step.beta) == ("S", "q", "k", "v", "g", "beta")
    assert (step.layout, step.per_key, step.gate_is_log, step.rank) == ("kv", False, True, 4)
    assert step.new == g.node(_add(g)).outputs[0]
    assert {g.node(n).op_type for n in step.nodes} == {"Exp", "Unsqueeze", "Mul", "Einsum", "Sub", "Add"}


def test_u_over_the_value_axis_is_a_miss_at_the_new_state() -> None:
    g = step_model(u_axis=-1, value_dim=4).graph
    canonicalize(g)
    miss = match_step(g, _add(g))
    new = g.node(_add(g)).outputs[0]
    assert isinstance(miss, Miss) and (miss.rule, miss.value, miss.node) == (RULE, new, "")
    assert miss.reason.startswith(f"{new}: u = ") and miss.reason.endswith(
        "sums the state over the value axis, not the key axis")


def test_an_intermediate_read_outside_names_the_value_and_node() -> None:
    g = step_model(leak=True).graph
    canonicalize(g)
    miss = match_step(g, _add(g))
    assert isinstance(miss, Miss) and miss.rule == RULE
    (delta_out,) = (n for n in g.node_ids() if g.node(n).outputs == ["delta"])
    assert miss.value == g.node(delta_out).inputs[0] and miss.node == "Identity"
    assert f"intermediate {miss.value} is also read by node Identity" in miss.reason


def _two_steps(extra_reader: bool) -> Graph:
    """Two HF-spelled steps chained through their states; optionally S1 also feeds ReduceMax."""
    e = GraphBuilder.new("two")
    state = e.input("S", FLOAT, [2, 3, 4, 5])
    for t in range(2):
        q, k = (e.input(f"{n}{t}", FLOAT, [2, 3, 4]) for n in ("q", "k"))
        v = e.input(f"v{t}", FLOAT, [2, 3, 5])
        g, beta = (e.input(f"{n}{t}", FLOAT, [2, 3]) for n in ("g", "beta"))
        dec = e.op("Mul", state, e.unsqueeze(e.unsqueeze(e.op("Exp", g), -1), -1))
        u = e.reduce("ReduceSum", e.op("Mul", dec, e.unsqueeze(k, -1)), -2, keepdims=0)
        delta = e.op("Mul", e.op("Sub", v, u), e.unsqueeze(beta, -1))
        state = e.op("Add", dec, e.op("Mul", e.unsqueeze(k, -1), e.unsqueeze(delta, -2)))
        o = e.reduce("ReduceSum", e.op("Mul", state, e.unsqueeze(q, -1)), -2, keepdims=0)
        e.output(o, f"o{t}")
        if t == 0 and extra_reader:
            e.output(e.reduce("ReduceMax", state, -1), "peek")
    e.output(state, "S_out")
    model = e.model()
    infer_shapes(model)
    canonicalize(model.graph)
    return model.graph


def test_two_linked_steps_are_one_chain() -> None:
    chains, misses = find_chains(_two_steps(False))
    assert misses == [] and [c.length for c in chains] == [2]
    assert chains[0].steps[0].new == chains[0].steps[1].prev


def test_a_state_read_outside_the_chain_is_a_miss_naming_the_reader() -> None:
    g = _two_steps(True)
    chains, misses = find_chains(g)
    assert chains == []
    (miss,) = misses
    (peek,) = (n for n in g.node_ids() if g.node(n).op_type == "ReduceMax")
    assert miss.value == g.node(peek).inputs[0] and miss.node == "ReduceMax"
    assert miss.reason == f"step 0: state {miss.value} is also read by node ReduceMax"
