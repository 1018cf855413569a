"""Peers of gdnc's kernel where installed: onnxruntime's ``com.microsoft::LinearAttention``
(update_rule gated_delta, CPU provider, I/O bound to preallocated buffers) and fla's fused
recurrent / chunked gated delta rule (CUDA). ``*_unavailable`` say why one cannot run here
(None: it can); a missing peer is reported, never an error."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from gdnc.bench.op_inputs import OpInputs
from gdnc.bench.options import GdnShape

ORT_LA = "ort-la"
FLA = "fla"


def ort_unavailable(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "measured on --device cpu only"
    if importlib.util.find_spec("onnxruntime") is None:
        return "not installed"
    return None


def fla_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "CUDA only"
    try:
        importlib.import_module("fla.ops.gated_delta_rule")
    except ImportError:
        return "not installed (pip install fla-core)"
    return None


def linear_attention_model(batch: int, tokens: int, shape: GdnShape, scale: float = 0.0) -> Any:
    """One LinearAttention node: query/key [B, T, HV*K], value [B, T, HV*V], past_state [B, HV,
    K, V], decay (log) and beta [B, T, HV] -> output, present_state (scale 0: K^-1/2)."""
    from onnx import TensorProto
    from onnx import helper as oh

    HV, K, V = shape.HV, shape.K, shape.V
    shapes = {"query": [batch, tokens, HV * K], "key": [batch, tokens, HV * K],
              "value": [batch, tokens, HV * V], "past_state": [batch, HV, K, V],
              "decay": [batch, tokens, HV], "beta": [batch, tokens, HV]}
    node = oh.make_node("LinearAttention", list(shapes), ["output", "present_state"],
                        domain="com.microsoft", q_num_heads=HV, kv_num_heads=HV,
                        update_rule="gated_delta", scale=scale)
    f32 = TensorProto.FLOAT
    graph = oh.make_graph(
        [node], "linear_attention", [oh.make_tensor_value_info(n, f32, s) for n, s in shapes.items()],
        [oh.make_tensor_value_info("output", f32, [batch, tokens, HV * V]),
         oh.make_tensor_value_info("present_state", f32, [batch, HV, K, V])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21), oh.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def ort_session(model: Any, threads: int) -> Any:
    """A CPU InferenceSession of ``model`` (a ModelProto or a path) on ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


class OrtLinearAttention:
    """``run(i)``: LinearAttention on inputs ``x`` and (a copy of) pool i % copies, outputs into
    preallocated arrays."""

    def __init__(self, x: OpInputs, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort

        self.session = ort_session(linear_attention_model(x.batch, x.tokens, x.shape, scale=1.0), threads)
        q, k, v, g, beta = (t.reshape(x.batch, x.tokens, -1).numpy() for t in x.packed)
        outputs = {"output": (x.batch, x.tokens, x.shape.HV * x.shape.V),
                   "present_state": tuple(x.pools[0].shape)}
        self.bindings = []
        for pool in x.pools:
            io = self.session.io_binding()
            feeds = {"query": q, "key": k, "value": v, "decay": g, "beta": beta,
                     "past_state": pool.numpy().copy()}
            for name, array in feeds.items():
                io.bind_cpu_input(name, np.ascontiguousarray(array))
            for name, shape in outputs.items():
                io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(np.empty(shape, np.float32)))
            self.bindings.append(io)

    def __call__(self, i: int) -> None:
        self.session.run_with_iobinding(self.bindings[i % len(self.bindings)])


class FlaGatedDeltaRule:
    """``run(i)``: fla's ``fused_recurrent_gated_delta_rule`` (T = 1) or ``chunk_gated_delta_rule``
    on ``x`` in the batch layout, from pool i % copies (fla returns the final states anew)."""

    def __init__(self, x: OpInputs) -> None:
        rule = importlib.import_module("fla.ops.gated_delta_rule")
        self.fn = rule.fused_recurrent_gated_delta_rule if x.tokens == 1 else rule.chunk_gated_delta_rule
        self.x, self.args = x, dict(zip(("q", "k", "v", "g", "beta"), x.batched()))

    def __call__(self, i: int) -> None:
        self.fn(**self.args, scale=1.0, initial_state=self.x.pools[i % self.x.copies],
                output_final_state=True)
