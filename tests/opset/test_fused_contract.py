"""The fused GatedDeltaNet node addressed by name: inputs, outputs and attributes."""

from __future__ import annotations

import random

import pytest

from gdnc.ir.graph import Graph, Node, make_attrs
from gdnc.opset import gated_delta_net as contract
from gdnc.opset.gated_delta_net import (
    ATTRIBUTES,
    INPUT_INDEX,
    INPUTS,
    OUTPUTS,
    REQUIRED_INPUTS,
    GdnAttrs,
    attrs_of,
    by_position,
    fused_node,
    input_of,
    is_fused,
    named_inputs,
    named_outputs,
    output_of,
    set_attr,
    set_input_of,
)

SEEDS = range(8)


def _random_inputs(rng: random.Random) -> dict[str, str]:
    """The required inputs plus a random subset of the optional ones, each a fresh value name."""
    optional = [name for name in INPUTS if name not in REQUIRED_INPUTS]
    chosen = [*REQUIRED_INPUTS, *rng.sample(optional, rng.randint(0, len(optional)))]
    return {name: f"{name}_{rng.randint(0, 999)}" for name in chosen}


def test_indices_follow_the_order_of_inputs():
    assert [INPUT_INDEX[name] for name in INPUTS] == list(range(len(INPUTS)))
    assert REQUIRED_INPUTS == ("q", "k", "v", "g", "beta")
    assert contract.QUALIFIED_OP == "ai.gdnc::GatedDeltaNet"


@pytest.mark.parametrize("seed", SEEDS)
def test_fused_node_places_inputs_by_name(seed):
    rng = random.Random(seed)
    inputs = _random_inputs(rng)
    outputs = {name: f"{name}_out" for name in OUTPUTS[: rng.randint(1, len(OUTPUTS))]}
    attrs = GdnAttrs(scale=rng.uniform(0.1, 2.0), qk_l2norm=rng.random() < 0.5,
                     head_map=rng.choice(contract.HEAD_MAPS), state_layout=rng.choice(contract.STATE_LAYOUTS))
    node = fused_node(inputs, outputs, attrs, name="gdn")
    assert is_fused(node) and node.qualified_op == contract.QUALIFIED_OP and node.name == "gdn"
    last = max(INPUT_INDEX[name] for name in inputs)
    assert len(node.inputs) == last + 1  # nothing after the last input given
    for name in INPUTS:
        assert input_of(node, name) == inputs.get(name, "")
        if name in inputs:
            assert node.inputs[INPUT_INDEX[name]] == inputs[name]
    assert named_inputs(node) == [(name, inputs[name]) for name in INPUTS if name in inputs]
    assert named_outputs(node) == list(outputs.items())
    assert [output_of(node, name) for name in OUTPUTS] == [outputs.get(name, "") for name in OUTPUTS]
    assert attrs_of(node) == attrs


def test_an_explicitly_empty_input_is_kept_as_a_placeholder():
    node = fused_node({"q": "q", "k": "k", "v": "v", "g": "g", "beta": "b", "state": ""}, {"o": "o"},
                      GdnAttrs())
    assert node.inputs == ["q", "k", "v", "g", "b", ""] and input_of(node, "state") == ""


def test_unknown_names_are_refused():
    node = fused_node({name: name for name in REQUIRED_INPUTS}, {"o": "o"}, GdnAttrs())
    with pytest.raises(KeyError, match="no input 'gate'"):
        input_of(node, "gate")
    with pytest.raises(KeyError, match="no output 'state'"):
        output_of(node, "state")
    with pytest.raises(KeyError, match="no attribute 'eps'"):
        set_attr(node, "eps", 1e-5)
    with pytest.raises(KeyError, match="cu"):
        by_position({"q": 1, "cu": 2}, INPUTS, None)


def test_is_fused_needs_domain_and_op_type():
    assert is_fused(Node("GatedDeltaNet", ["q"], ["o"], domain="ai.gdnc"))
    assert not is_fused(Node("GatedDeltaNet", ["q"], ["o"]))
    assert not is_fused(Node("LinearAttention", ["q"], ["o"], domain="ai.gdnc"))


@pytest.mark.parametrize("seed", SEEDS)
def test_attributes_by_name(seed):
    rng = random.Random(seed)
    node = Node("GatedDeltaNet", ["q", "k", "v", "g", "b"], ["o"], domain="ai.gdnc")
    assert attrs_of(node) == GdnAttrs()  # defaults
    scale, head_map = rng.uniform(0.1, 3.0), rng.choice(contract.HEAD_MAPS)
    set_attr(node, "scale", scale)
    set_attr(node, "head_map", head_map)
    set_attr(node, "qk_l2norm", 1)
    assert set(node.attrs) <= set(ATTRIBUTES)
    assert attrs_of(node) == GdnAttrs(scale=scale, qk_l2norm=True, head_map=head_map)
    node.attrs.update(make_attrs(state_layout="vk"))
    assert attrs_of(node).state_layout == "vk"


@pytest.mark.parametrize("seed", SEEDS)
def test_set_input_of_rewires_the_graph(seed):
    rng = random.Random(seed)
    g = Graph()
    inputs = {name: name for name in REQUIRED_INPUTS}
    g.inputs.extend([*inputs, "cu_a", "cu_b"])
    nid = g.add_node(fused_node(inputs, {"o": "o"}, GdnAttrs()))
    g.outputs = ["o"]
    name = rng.choice(["cu_seqlens", "state_out_index", "state"])
    set_input_of(g, nid, name, "cu_a")  # beyond the node's inputs: padded with ""
    node = g.node(nid)
    assert input_of(node, name) == "cu_a" and len(node.inputs) == INPUT_INDEX[name] + 1
    assert all(x == "" for x in node.inputs[len(REQUIRED_INPUTS):INPUT_INDEX[name]])
    assert g.consumers("cu_a") == [nid]
    set_input_of(g, nid, name, "cu_b")
    assert input_of(g.node(nid), name) == "cu_b"
    assert g.consumers("cu_a") == [] and g.consumers("cu_b") == [nid]
