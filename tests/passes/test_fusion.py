"""The fusion pass on real torch.onnx.export graphs: structure after, numerics before/after."""

from __future__ import annotations

import copy
import re

import numpy as np
import onnxruntime as ort
import pytest

from corpus.spellings import EXPORTERS, Spelling, fusable, near_misses
from corpus.zoo import export_hf, export_variant
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import model_to_proto
from gdnc.opset import gated_delta_net as fused_op
from gdnc.passes.convert import convert_model, inspect_model
from gdnc.runtime.executor import Executor

FUSED = f"{fused_op.DOMAIN}::{fused_op.OP_TYPE}"
TOL = 1e-5


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def _ort(model: Model | str, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model if isinstance(model, str) else model_to_proto(model).SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _convert(path: str, target: str = "native") -> tuple[Model, object]:
    model = load_onnx(path)
    report = convert_model(model, target=target)
    return model, report


def _check_numerics(zoo, model: Model) -> None:
    reference = _ort(zoo.path, zoo.inputs)
    ours = Executor(model).run(zoo.inputs)
    theirs = _ort(model, zoo.inputs)
    for ref, gd, rt in zip(reference, ours.values(), theirs):
        assert np.isfinite(gd.numpy()).all()
        assert _rel(gd.numpy(), ref) <= TOL
        assert _rel(rt, ref) <= TOL


@pytest.mark.parametrize("T", [1, 3, 16, 64])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_hf_export_fuses_to_one_node(exporter: str, T: int) -> None:
    zoo = export_hf(T=T, exporter=exporter, l2norm=True, gva=True)
    model, report = _convert(zoo.path)
    assert [c.steps for c in report.chains] == [T]
    # the per-token ops, the write-back, the gathers, l2norm, scale and GVA repeat all fold
    assert model.graph.op_histogram() == {FUSED: 1}
    node = next(n for _, n in model.graph.nodes())
    assert node.attr("qk_l2norm") == 1 and node.attr("head_map") == "interleave"
    assert node.attr("scale") == pytest.approx(zoo.meta["K"] ** -0.5, rel=1e-6)
    _check_numerics(zoo, model)


def test_dynamo_t16_node_count() -> None:
    zoo = export_hf(T=16, exporter="dynamo", l2norm=False, gva=False)
    model, report = _convert(zoo.path)
    assert report.nodes_before >= 22 * 16  # ~23 nodes per token
    assert report.nodes_after <= 10
    _check_numerics(zoo, model)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_initial_state_becomes_node_input(exporter: str) -> None:
    zoo = export_hf(T=4, exporter=exporter, with_initial_state=True, gva=True)
    model, report = _convert(zoo.path)
    assert report.chains[0].initial_state
    node = next(n for _, n in model.graph.nodes() if n.op_type == fused_op.OP_TYPE)
    assert node.inputs[5] == "initial_state"
    _check_numerics(zoo, model)


FUSABLE = [s.name for s in fusable()]


@pytest.mark.parametrize(("variant", "exporter"), [(s.name, e) for s in fusable() for e in s.exporters])
def test_spelling_variants_fuse_and_match(variant: str, exporter: str) -> None:
    zoo = export_variant(name=variant, T=5, exporter=exporter, gva=True, l2norm=True)
    model, report = _convert(zoo.path)
    assert len(report.chains) == 1 and report.chains[0].steps == 5
    hist = model.graph.op_histogram()
    assert hist.pop(FUSED) == 1
    assert not {"ReduceSum", "MatMul", "Einsum", "ScatterND", "ScatterElements", "Exp"} & set(hist)
    node = next(n for _, n in model.graph.nodes() if n.op_type == fused_op.OP_TYPE)
    assert node.attr("state_layout") == zoo.meta["state_layout"]
    if variant == "kda":
        assert report.chains[0].gate.startswith("per-key")
    _check_numerics(zoo, model)


@pytest.mark.parametrize("spelling", near_misses(), ids=lambda s: s.name)
def test_near_misses_do_not_fuse_and_say_why(spelling: Spelling) -> None:
    zoo = export_variant(name=spelling.name, T=4, exporter="dynamo", K=8, V=8)
    model = load_onnx(zoo.path)
    before = copy.deepcopy(model.graph.op_histogram())
    report = inspect_model(model)
    assert report.chains == []
    assert spelling.expected_miss is not None
    assert any(re.search(spelling.expected_miss, m.reason) for m in report.misses), report.misses
    assert model.graph.op_histogram() == before  # inspect leaves the model alone
    converted, _ = _convert(zoo.path)
    assert FUSED not in converted.graph.op_histogram()
    reference = _ort(zoo.path, zoo.inputs)
    for ref, got in zip(reference, Executor(converted).run(zoo.inputs).values()):
        assert _rel(got.numpy(), ref) <= TOL


def test_traced_length_is_not_a_limit_of_the_fused_node() -> None:
    """An export traced at T=4 is wrong at T=6; the fused node (shape-free) is not."""
    import torch

    from gdnc.lowering.gated_delta_net.api import run_fused_node  # the node's contract, independent of T
    from gdnc.opset.gated_delta_net import GdnAttrs

    zoo = export_hf(T=4, exporter="dynamo", gva=False, l2norm=False)
    model, _ = _convert(zoo.path)
    node = next(n for _, n in model.graph.nodes() if n.op_type == fused_op.OP_TYPE)
    attrs = GdnAttrs.from_onnx({k: node.attr(k) for k in node.attrs})
    rng = np.random.default_rng(1)
    B, T, H, K = 2, 6, 2, 8
    q, k, v = (torch.from_numpy(rng.standard_normal((B, T, H, K)).astype(np.float32)) for _ in range(3))
    g = torch.from_numpy(-np.abs(rng.standard_normal((B, T, H))).astype(np.float32))
    beta = torch.from_numpy(rng.uniform(0.1, 0.9, (B, T, H)).astype(np.float32))
    o6, s6 = run_fused_node([q, k, v, g, beta], attrs, 2)
    o4, _ = run_fused_node([q[:, :4], k[:, :4], v[:, :4], g[:, :4], beta[:, :4]], attrs, 2)
    assert torch.allclose(o6[:, :4], o4, rtol=1e-5, atol=1e-6) and o6.shape[1] == 6


@pytest.mark.parametrize("variant", FUSABLE)
def test_ort_target_runs_linear_attention(variant: str) -> None:
    zoo = export_variant(name=variant, T=5, exporter="dynamo", gva=True, l2norm=True,
                         with_initial_state=True)
    model, report = _convert(zoo.path, target="ort")
    hist = model.graph.op_histogram()
    assert hist["com.microsoft::LinearAttention"] == 1 and FUSED not in hist
    _check_numerics(zoo, model)


def test_ort_target_refuses_what_linear_attention_cannot_express() -> None:
    from gdnc.errors import EmitError
    from gdnc.ir.graph import Graph, Model, Node, make_attrs
    from gdnc.passes.targets.ort import lower_to_linear_attention

    g = Graph()
    for name, shape in [("q", (6, 2, 8)), ("k", (6, 2, 8)), ("v", (6, 2, 8)), ("g", (6, 2)),
                        ("b", (6, 2)), ("cu", (3,))]:
        g.inputs.append(name)
        g.value(name).shape, g.value(name).dtype = shape, 7 if name == "cu" else 1
    g.add_node(Node(fused_op.OP_TYPE, ["q", "k", "v", "g", "b", "", "cu"], ["o"], domain=fused_op.DOMAIN,
                    attrs=make_attrs(scale=0.3), name="gdn"))
    g.outputs = ["o"]
    with pytest.raises(EmitError, match="node gdn: the ort target cannot express several packed sequences"):
        lower_to_linear_attention(Model(g))


def test_many_layers_each_fuse() -> None:
    from corpus.zoo import export_many_layers

    zoo = export_many_layers(n_layers=4, T=4)
    model, report = _convert(zoo.path)
    assert len(report.chains) == 4 and report.misses == []
    assert model.graph.op_histogram()[FUSED] == 4
    _check_numerics(zoo, model)


@pytest.mark.parametrize("head_map", ["interleave", "tile"])
@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("kda", [False, True], ids=["gda", "kda"])
@pytest.mark.parametrize("batch_dim", [None, "batch"], ids=["static", "symbolic-batch"])
def test_ort_target_on_hand_built_nodes(head_map: str, layout: str, kda: bool, batch_dim: str | None) -> None:
    """Head maps, layouts and gates the HF exports never use, against the node's own kernel;
    declared with a static batch or a symbolic one (a dynamic-batch export)."""
    import torch

    from gdnc.ir.graph import Graph, Node, make_attrs
    from gdnc.lowering.gated_delta_net.api import run_fused_node
    from gdnc.opset.gated_delta_net import GdnAttrs
    from gdnc.passes.targets.ort import lower_to_linear_attention

    B, T, H, HV, K, V = 2, 5, 2, 4, 8, 6
    rng = np.random.default_rng(7)
    shapes = {"q": (B, T, H, K), "k": (B, T, H, K), "v": (B, T, HV, V),
              "g": (B, T, HV, K) if kda else (B, T, HV), "b": (B, T, HV),
              "s": (B, HV, K, V) if layout == "kv" else (B, HV, V, K)}
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    feeds["g"] = -np.log1p(np.exp(feeds["g"]))
    feeds["b"] = 1 / (1 + np.exp(-feeds["b"]))
    attrs = GdnAttrs(scale=0.4, qk_l2norm=True, head_map=head_map, state_layout=layout)
    g = Graph()
    for name, shape in (*shapes.items(), ("o", (B, T, HV, V)), ("final", shapes["s"])):
        g.value(name).shape, g.value(name).dtype = (batch_dim or B, *shape[1:]), 1
    g.inputs = list(shapes)
    g.add_node(Node(fused_op.OP_TYPE, ["q", "k", "v", "g", "b", "s"], ["o", "final"],
                    domain=fused_op.DOMAIN, attrs=make_attrs(**attrs.to_onnx()), name="gdn"))
    g.outputs = ["o", "final"]
    model = Model(g, opset_imports={"": 18, fused_op.DOMAIN: 1}, ir_version=10)
    expected = run_fused_node([torch.from_numpy(feeds[n]) for n in shapes], attrs, 2)
    assert lower_to_linear_attention(model) == 1
    for got, want in zip(_ort(model, feeds), expected):
        assert _rel(got, want.numpy()) <= TOL
    for got, want in zip(Executor(model).run(feeds).values(), expected):
        assert _rel(got.numpy(), want.numpy()) <= TOL
