"""The ort target on a packed multi-sequence node over a state pool (a GGUF batch graph's form):
lowered to a padded batch around ``LinearAttention``, it computes in onnxruntime what the fused
node computes in gdnc (outputs and the updated pool), for either state layout and head map,
sequences out of slot order, a negative read slot (zeros) and a negative write slot (no write)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import model_to_proto
from gdnc.opset.gated_delta_net import GdnAttrs, fused_node
from gdnc.passes.targets.ort import lower_to_linear_attention
from gdnc.runtime.executor import Executor

H, HV, K, V, P = 2, 4, 8, 6, 5
LENGTHS = (3, 1, 4)
SLOTS_IN = np.array([3, -1, 0])  # sequence 1 starts from zeros
SLOTS_OUT = np.array([3, 1, -1])  # sequence 2's final state is not written


def _model(attrs: GdnAttrs) -> Model:
    e = GraphBuilder.new("pooled")
    state = (HV, V, K) if attrs.state_layout == "vk" else (HV, K, V)
    ins = {"q": e.input("q", FLOAT, ["T", H, K]), "k": e.input("k", FLOAT, ["T", H, K]),
           "v": e.input("v", FLOAT, ["T", HV, V]), "g": e.input("g", FLOAT, ["T", HV]),
           "beta": e.input("beta", FLOAT, ["T", HV]), "state": e.input("pool", FLOAT, ["P", *state]),
           "cu_seqlens": e.input("cu", INT64, ["N+1"]), "state_in_index": e.input("slots_in", INT64, ["N"]),
           "state_out_index": e.input("slots_out", INT64, ["N"])}
    e.add(fused_node(ins, {"o": "o", "final_state": "pool_out"}, attrs, name="gdn"))
    e.graph.outputs = ["o", "pool_out"]
    e.typed("o", FLOAT, ("T", HV, V))
    e.typed("pool_out", FLOAT, ("P", *state))
    return e.model()


def _feeds(attrs: GdnAttrs, rng: np.random.Generator) -> dict[str, np.ndarray]:
    T = sum(LENGTHS)
    state = (HV, V, K) if attrs.state_layout == "vk" else (HV, K, V)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {"q": f32(T, H, K), "k": f32(T, H, K), "v": f32(T, HV, V),
            "g": -np.abs(f32(T, HV)), "beta": rng.uniform(0, 1, (T, HV)).astype(np.float32),
            "pool": f32(P, *state), "cu": np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64),
            "slots_in": SLOTS_IN, "slots_out": SLOTS_OUT}


@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("head_map", ["interleave", "tile"])
def test_pooled_node_runs_as_linear_attention(layout, head_map):
    attrs = GdnAttrs(scale=0.3, qk_l2norm=True, head_map=head_map, state_layout=layout)
    feeds = _feeds(attrs, np.random.default_rng(0))
    want = {k: v.numpy() for k, v in Executor(_model(attrs)).run(feeds).items()}
    model = _model(attrs)
    assert lower_to_linear_attention(model) == 1
    assert "com.microsoft::LinearAttention" in model.graph.op_histogram()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_to_proto(model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    got = dict(zip(["o", "pool_out"], sess.run(None, feeds)))
    for name in want:
        assert got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= 1e-5, name
    pool, untouched = feeds["pool"], [0, 2, 4]  # slot 0 is read (by sequence 2), not written
    assert np.array_equal(got["pool_out"][untouched], pool[untouched])
    assert not np.isclose(got["pool_out"][[1, 3]], pool[[1, 3]]).all()
