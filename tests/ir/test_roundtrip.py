"""ONNX -> IR -> ONNX is lossless on real exports; the IR's edit operations keep it sound."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import json_format
from onnx import helper

from corpus.zoo import EXPORTERS, export_hf
from gdnc.errors import GraphError, ModelLoadError
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.from_onnx import model_from_proto
from gdnc.ir.graph import Graph, Node
from gdnc.ir.to_onnx import external_data_files, model_to_proto, save_onnx


def _canonical(proto: onnx.ModelProto) -> dict:
    """The message as a dict; opset imports as {domain: version} (an explicit "" domain and
    an absent one mean the same, and which one a writer used is not kept)."""
    data = json_format.MessageToDict(proto)
    data["opsetImport"] = {o.get("domain", ""): o["version"] for o in data["opsetImport"]}
    return data


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_real_export_round_trips_exactly(exporter: str) -> None:
    zoo = export_hf(T=3, exporter=exporter, gva=True, l2norm=True)
    original = onnx.load(zoo.path)
    again = model_to_proto(load_onnx(zoo.path))
    assert _canonical(again) == _canonical(original)


def test_external_data_round_trip(tmp_path) -> None:
    zoo = export_hf(T=3, exporter="dynamo", gva=True)
    model = load_onnx(zoo.path)
    path = save_onnx(model, tmp_path / "m.onnx", external_data=True)
    (data,) = external_data_files(path)
    assert data.is_file() and re.fullmatch(r"m\.onnx\.[0-9a-f]{8}\.data", data.name)
    raw = onnx.load(str(path), load_external_data=False)
    external = [t for t in raw.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(e.value == data.name for t in external for e in t.external_data
                            if e.key == "location")
    reloaded = load_onnx(path)
    assert reloaded.external_data
    assert _canonical(model_to_proto(reloaded)) == _canonical(onnx.load(zoo.path))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def _model_with_subgraph_and_function() -> onnx.ModelProto:
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", onnx.TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                               [helper.make_tensor_value_info("y_else", onnx.TensorProto.FLOAT, [2])])
    fn = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    nodes = [
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch"),
        helper.make_node("Twice", ["y"], ["z"], domain="local", name="twice"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["n"])],
        initializer=[onnx.numpy_helper.from_array(np.ones(2, np.float32), "unused_w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("local", 1)],
                              functions=[fn])
    model.metadata_props.add(key="k", value="v")
    return model


def test_subgraphs_functions_metadata_round_trip() -> None:
    proto = _model_with_subgraph_and_function()
    onnx.checker.check_model(proto)
    again = model_to_proto(model_from_proto(proto))
    assert _canonical(again) == _canonical(proto)
    ir = model_from_proto(proto)
    branch = next(n for _, n in ir.graph.nodes() if n.op_type == "If")
    assert isinstance(branch.attr("then_branch"), Graph)


def test_edits_keep_producers_and_order() -> None:
    g = Graph()
    g.inputs = ["x"]
    a = g.add_node(Node("Neg", ["x"], ["a"]))
    b = g.add_node(Node("Exp", ["a"], ["b"]))
    g.outputs = ["b"]
    assert g.consumers("a") == [b] and g.producer("b") == b
    g.set_input(b, 0, "x")
    assert g.consumers("a") == [] and not g.nx.has_edge(a, b)
    with pytest.raises(GraphError, match="two producers"):
        g.add_node(Node("Relu", ["x"], ["b"]))
    g.remove_node(a)
    g.check()


def test_cycles_and_dangling_values_are_graph_errors() -> None:
    g = Graph()
    g.add_node(Node("Neg", ["b"], ["a"]))
    g.add_node(Node("Neg", ["a"], ["b"]))
    with pytest.raises(GraphError, match="cycle"):
        g.topological_order()
    h = Graph()
    h.add_node(Node("Neg", ["nowhere"], ["a"]))
    h.outputs = ["a"]
    with pytest.raises(GraphError, match="nothing produces"):
        h.check()


def test_bad_files_are_one_line_load_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\xff\xff\xff\xff garbage")
    with pytest.raises(ModelLoadError):
        load_onnx(junk)
    zoo = export_hf(T=3, exporter="dynamo")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(zoo.path).read_bytes()[:500])
    with pytest.raises(ModelLoadError):
        load_onnx(truncated)
