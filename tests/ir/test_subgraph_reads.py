"""Reads from inside subgraphs (If branches, Loop/Scan bodies) are uses of the enclosing
graph's values: for consumers, order, dead-code removal, renaming and fresh names."""

from __future__ import annotations

import onnx
import pytest

from corpus.subgraphs import MODELS, if_reads_identities, nested_reads_two_levels_up
from gdnc.errors import GraphError
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.from_onnx import model_from_proto
from gdnc.ir.graph import Attr, Graph, Node
from gdnc.ir.to_onnx import model_to_proto
from gdnc.passes.cleanup import CLEANUP_RULES, dead_code_elimination
from gdnc.passes.rewrite import graph_rewrite
from tests.ir.test_roundtrip import _canonical

_GRAPH = onnx.AttributeProto.GRAPH


def _with_subgraphs(g: Graph) -> list[int]:
    return [nid for nid in g.node_ids() if g.node(nid).subgraphs()]


def _branch(name: str, nodes: list[Node], output: str) -> Graph:
    sub = Graph(name)
    for node in nodes:
        sub.add_node(node)
    sub.outputs = [output]
    return sub


def _branch_proto(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _if(then: Graph, other: Graph, output: str = "y") -> Node:
    return Node("If", ["c"], [output], attrs={"then_branch": Attr(_GRAPH, then),
                                              "else_branch": Attr(_GRAPH, other)})


@pytest.mark.parametrize("case", MODELS)
def test_subgraph_reads_are_uses(case) -> None:
    g = model_from_proto(MODELS[case]()).graph
    (nid,) = _with_subgraphs(g)
    assert "u" in g.implicit_inputs(nid) and "u" in g.reads(nid)
    assert nid in g.consumers("u")
    assert g.nx.has_edge(g.producer("u"), nid)


def test_nested_reads_reach_the_outermost_node() -> None:
    g = model_from_proto(nested_reads_two_levels_up()).graph
    (nid,) = _with_subgraphs(g)
    # d: the inner If's condition; u and the initializer k: read two levels down
    assert set(g.implicit_inputs(nid)) == {"d", "u", "k"}
    assert g.reads(nid)[0] == "c"


def test_producers_come_before_the_nodes_whose_subgraphs_read_them() -> None:
    g = Graph()
    g.inputs = ["c", "x"]
    reader = g.add_node(_if(_branch("then", [Node("Neg", ["u"], ["t"])], "t"),
                            _branch("else", [Node("Abs", ["x"], ["e"])], "e")), position=0)
    maker = g.add_node(Node("Sin", ["x"], ["u"]), position=1)
    g.outputs = ["y"]
    assert g.topological_order() == [maker, reader]
    g.check()


@pytest.mark.parametrize("case", MODELS)
def test_dead_code_removal_keeps_what_subgraphs_read(case) -> None:
    model = model_from_proto(MODELS[case]())
    before = (len(model.graph), set(model.graph.initializers))
    assert dead_code_elimination(model.graph) == 0
    assert (len(model.graph), set(model.graph.initializers)) == before
    model.graph.check()


def test_cleanup_renames_the_reads_inside_subgraphs() -> None:
    model = model_from_proto(if_reads_identities())
    g = model.graph
    graph_rewrite(g, CLEANUP_RULES, "cleanup")
    dead_code_elimination(g)
    assert sorted(n.op_type for _, n in g.nodes()) == ["If", "Neg"]
    (nid,) = _with_subgraphs(g)
    then, other = g.node(nid).subgraphs()
    # v was bypassed (its readers read u), then u renamed to the graph output w
    assert [n.inputs for _, n in then.nodes()] == [["w", "w"]]
    assert [n.inputs for _, n in other.nodes()] == [["w", "w"]]
    assert g.implicit_inputs(nid) == ("w",) and g.consumers("w") == [nid]
    g.check()
    onnx.checker.check_model(model_to_proto(model), full_check=True)


def test_renaming_leaves_a_subgraph_own_value_of_that_name() -> None:
    g = Graph()
    g.inputs = ["c", "x"]
    g.add_node(Node("Sin", ["x"], ["u"]))
    own = _branch("else", [Node("Abs", ["x"], ["u"]), Node("Neg", ["u"], ["e"])], "e")
    nid = g.add_node(_if(_branch("then", [Node("Neg", ["u"], ["t"])], "t"), own))
    g.outputs = ["y"]
    g.rename_value("u", "z")
    then, other = g.node(nid).subgraphs()
    assert [n.inputs for _, n in then.nodes()] == [["z"]]
    assert [n.inputs for _, n in other.nodes()] == [["x"], ["u"]]
    assert g.implicit_inputs(nid) == ("z", "x")
    g.check()


def test_fresh_names_avoid_names_defined_inside_subgraphs() -> None:
    g = model_from_proto(nested_reads_two_levels_up()).graph
    inner = {"a", "b", "t", "n"}  # outputs of nodes two and one levels down
    assert not inner & {g.fresh_name(name) for name in inner}
    with pytest.raises(GraphError, match="taken"):
        g.rename_value("u", "a")


@pytest.mark.parametrize("case", MODELS)
def test_round_trip_writes_subgraphs_unchanged(case) -> None:
    proto = MODELS[case]()
    assert _canonical(model_to_proto(model_from_proto(proto))) == _canonical(proto)


def test_a_branch_passing_an_outer_value_out_is_refused_with_the_path(tmp_path) -> None:
    """onnx's checker and onnxruntime refuse it (an Identity must come between)."""
    proto = if_reads_identities()
    then = _branch_proto(proto.graph.node[3], "then_branch")
    then.ClearField("node")
    then.output[0].name = "u"
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    with pytest.raises(GraphError) as err:
        load_onnx(path)
    assert str(err.value) == f"{path}: subgraph 'then' outputs 'u' of an enclosing graph"
    assert err.value.fix == "put an Identity node between them"


def test_dangling_reads_in_subgraphs_are_refused_with_the_path(tmp_path) -> None:
    proto = nested_reads_two_levels_up()
    inner_if = _branch_proto(proto.graph.node[1], "then_branch").node[0]
    _branch_proto(inner_if, "then_branch").node[0].input[0] = "ghost"
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    with pytest.raises(GraphError, match=f"^{path}: node Mul reads 'ghost', which nothing produces$"):
        load_onnx(path)
