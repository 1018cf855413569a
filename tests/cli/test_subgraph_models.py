"""Valid models whose If / Loop / Scan subgraphs read values made in the enclosing graph, through
the command line: inspect, convert, run and compare accept them and agree with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from corpus.subgraphs import MODELS, feeds, run_ort
from gdnc.commands.convert import convert_file
from gdnc.commands.onnx_compare import compare_file
from tests.robustness.harness import Outcome, hold_to_promise, run_cli

SUITE = "valid-but-rare ONNX"
EXAMPLE = Path(__file__).parents[2] / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"


def _accepted(case: str, *args: str | Path) -> Outcome:
    outcome = run_cli([str(a) for a in args])
    hold_to_promise(SUITE, f"{case}: {args[0]}", outcome, may_succeed=True)
    assert outcome.code == 0, outcome.stderr
    return outcome


def _subgraphs(proto: onnx.ModelProto) -> dict[str, bytes]:
    """Every subgraph attribute of the main graph's nodes, serialized, by node and attribute."""
    return {f"{n.name}.{a.name}": a.g.SerializeToString(deterministic=True)
            for n in proto.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH}


def _check_all_commands(case: str, proto: onnx.ModelProto, tmp_path: Path,
                        inputs: dict[str, np.ndarray]) -> dict:
    """inspect, convert, run, compare on ``proto``; run's outputs match onnxruntime's. Returns
    compare's JSON."""
    onnx.checker.check_model(proto, full_check=True)
    src, npz, converted, outputs = (tmp_path / n for n in ("m.onnx", "in.npz", "c.onnx", "out.npz"))
    onnx.save(proto, src)
    np.savez(npz, **inputs)
    _accepted(case, "inspect", src, "--json")
    _accepted(case, "convert", src, "-o", converted)
    onnx.checker.check_model(onnx.load(converted), full_check=True)
    _accepted(case, "run", src, "--inputs", npz, "-o", outputs)
    expected = run_ort(proto, inputs)
    with np.load(outputs) as got:
        assert sorted(got.files) == sorted(expected)
        for name, ref in expected.items():
            np.testing.assert_allclose(got[name], ref, rtol=1e-6, atol=1e-6, err_msg=f"{case} {name}")
    report = json.loads(_accepted(case, "compare", src, "--inputs", npz, "--json").stdout)
    assert report["passed"] and len(report["outputs"]) == 2 * len(expected), report
    return report


@pytest.mark.parametrize("case", MODELS)
def test_subgraphs_reading_outer_values(case, tmp_path) -> None:
    proto = MODELS[case]()
    rng = np.random.default_rng()
    for trips in (0, 3):  # both branches of each If, a Loop that runs and one that does not
        inputs = feeds(proto, rng, trips)
        inputs.update({name: np.array(not trips) for name in ("c", "d") if name in inputs})
        _check_all_commands(case, proto, tmp_path, inputs)
    if case != "If reading Identity outputs":  # there cleanup renames what the branches read
        assert _subgraphs(onnx.load(tmp_path / "c.onnx")) == _subgraphs(proto)


def _fusable_with_if(then_reads: tuple[str, str], else_reads: tuple[str, str]) -> onnx.ModelProto:
    """The example delta net (16 tokens) plus ``extra = If(c, sum of squares of then_reads, of
    else_reads)``, the values read only inside the branches (squares: a plain sum of signed
    values cancels, and its fp32 rounding then differs between executors beyond 1e-5)."""
    proto = onnx.load(str(EXAMPLE))

    def branch(name: str, reads: tuple[str, str]) -> onnx.GraphProto:
        a, b = (f"{name}_{i}" for i in range(2))
        return helper.make_graph(
            [helper.make_node("Mul", [reads[0], reads[0]], [f"{a}_sq"]),
             helper.make_node("Mul", [reads[1], reads[1]], [f"{b}_sq"]),
             helper.make_node("ReduceSum", [f"{a}_sq"], [a], keepdims=0),
             helper.make_node("ReduceSum", [f"{b}_sq"], [b], keepdims=0),
             helper.make_node("Add", [a, b], [f"{name}_out"])],
            name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])])

    proto.graph.node.append(helper.make_node("If", ["c"], ["extra"], name="extra",
                                             then_branch=branch("then", then_reads),
                                             else_branch=branch("else", else_reads)))
    proto.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    proto.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, []))
    return proto


def _delta_net_inputs(proto: onnx.ModelProto, rng: np.random.Generator, c: bool) -> dict[str, np.ndarray]:
    inputs = {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim])
              .astype(np.float32) for vi in proto.graph.input if vi.name != "c"}
    inputs["g"] = -np.log1p(np.exp(inputs["g"]))  # log-gates <= 0
    inputs["beta"] = 1 / (1 + np.exp(-inputs["beta"]))
    return {**inputs, "c": np.array(c)}


@pytest.mark.parametrize(("reads", "chains"), [
    # the l2norm's rsqrt of q (absorbed by the fused node) and token 0's output: fused, kept
    ((("rsqrt", "sum_4"), ("sum_4", "rsqrt_1")), 1),
    # step 0's and step 1's new states: the chain cannot be fused through them
    ((("add_2", "sum_4"), ("add_3", "rsqrt")), 0),
], ids=["values the fusion replaces", "intermediate states"])
def test_fusion_keeps_values_read_in_subgraphs(reads, chains, tmp_path) -> None:
    """Through the library (the CLI's in-process harness traces every allocation, too slow
    for its deadline on this model)."""
    proto = _fusable_with_if(*reads)
    src, converted = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save(proto, src)
    rng = np.random.default_rng()
    inputs = _delta_net_inputs(proto, rng, bool(rng.integers(2)))
    report = convert_file(src, converted)
    assert len(report.chains) == chains
    fused = onnx.load(converted)
    onnx.checker.check_model(fused, full_check=True)
    assert _subgraphs(fused) == _subgraphs(proto)
    result = compare_file(src, inputs=inputs)
    # o, final_state and extra, each in gdnc and in onnxruntime
    assert result.passed and result.chains == chains and len(result.diffs) == 6, result
