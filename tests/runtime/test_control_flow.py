"""If, Loop and Scan in the executor against onnxruntime, their subgraphs reading values of
the enclosing graphs (which the executor must keep alive until the subgraph has run)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from corpus.subgraphs import MODELS, feeds, loop_reads_produced, run_ort
from gdnc.errors import UnsupportedOpError
from gdnc.ir.from_onnx import model_from_proto
from gdnc.runtime.executor import Executor, GraphRunner

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})  # op coverage: see test_onnx_ops


@settings(max_examples=30, deadline=None)
@given(case=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 2**32 - 1), trips=st.integers(0, 5))
def test_matches_onnxruntime(case: str, seed: int, trips: int) -> None:
    proto = MODELS[case]()
    inputs = feeds(proto, np.random.default_rng(seed), trips)
    expected = run_ort(proto, inputs)
    got = Executor(model_from_proto(proto)).run(inputs)
    assert list(got) == list(expected)
    for name, ref in expected.items():
        out = got[name].numpy()
        assert (out.dtype, out.shape) == (ref.dtype, ref.shape), f"{case} {name} seed={seed}"
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6, err_msg=f"{case} {name} seed={seed}")


def test_loop_condition_stops_it_and_the_body_plan_is_built_once(monkeypatch) -> None:
    proto = loop_reads_produced()
    loop = proto.graph.node[1]
    loop.input[1] = "go"
    proto.graph.input.append(helper.make_tensor_value_info("go", onnx.TensorProto.BOOL, []))
    body = loop.attribute[0].g
    body.node[0].CopyFrom(helper.make_node("Less", ["i", "two"], ["cond_out"]))  # stop after i = 2
    body.initializer.append(onnx.numpy_helper.from_array(np.int64(2), "two"))
    rng = np.random.default_rng()
    inputs = {**feeds(proto, rng, trips=10), "go": np.array(True)}
    executor = Executor(model_from_proto(proto))
    plans = []
    monkeypatch.setattr(GraphRunner, "__init__", lambda *args, **kwargs: plans.append(args))
    got = executor.run(inputs)
    assert plans == []
    expected = run_ort(proto, inputs)
    assert got["ys"].shape == (3, 3)
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name].numpy(), ref, rtol=1e-6, atol=1e-6)


def test_a_loop_without_count_or_condition_is_refused() -> None:
    proto = loop_reads_produced()
    proto.graph.node[1].input[0] = ""
    proto.graph.input.pop(0)
    with pytest.raises(UnsupportedOpError, match="never ends"):
        Executor(model_from_proto(proto)).run({"x": np.ones(3, np.float32)})


def test_scalar_inputs_keep_rank_zero() -> None:
    proto = MODELS["If"]()
    executor = Executor(model_from_proto(proto))
    out = executor.run({"x": np.float32([1, 2, 3]), "c": np.array(True)})
    torch.testing.assert_close(out["y"], torch.tensor([1.0, 4.0, 9.0]))
