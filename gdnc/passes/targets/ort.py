"""The "ort" target: each fused node becomes onnxruntime's ``com.microsoft::LinearAttention``.

LinearAttention (update_rule "gated_delta") takes query/key/value packed as [B, T, heads*D],
a per-head log-decay [B, T, H_kv] or per-key [B, T, H_kv*d_k], beta [B, T, H_kv] and a
key-major state [B, H_kv, d_k, d_v]. With fewer query heads than kv heads ("inverse GQA"),
query (and key) head h serves value heads h*r .. h*r+r-1: gdnc's "interleave" map, passed as
is; a "tile" map gathers q and k up to HV heads first. q and k are l2-normalised outside when
``qk_l2norm`` is set; a value-major state is transposed in and out.

What it cannot express (EmitError names the node): packed multi-sequence input
(``cu_seqlens``), a state pool with slot indices, per-token states, and head counts or head
dims that are not known ints (batch and time may be symbolic). A packed single sequence is
lowered as a batch of one.
"""

from __future__ import annotations

import numpy as np

from gdnc.errors import EmitError
from gdnc.ir.builder import GraphBuilder
from gdnc.ir.graph import Graph, Model, Node
from gdnc.opset.gated_delta_net import DOMAIN, L2NORM_EPS, attrs_of, input_of, is_fused, output_of
from gdnc.passes.patterns import known_dim, shape_of

ORT_DOMAIN = "com.microsoft"


def _refuse(node: Node, why: str) -> EmitError:
    return EmitError(f"node {node.name or node.op_type}: the ort target cannot express {why}")


def _heads_known(g: Graph, value: str) -> tuple | None:
    """The shape of ``value`` when its last two dims (heads, head dim) are known ints."""
    shape = shape_of(g, value)
    if shape is None or len(shape) < 3 or known_dim(shape, -2) is None or known_dim(shape, -1) is None:
        return None
    return shape


def _lower(g: Graph, nid: int) -> None:
    node = g.node(nid)
    q, k, v, gate, beta, state = (input_of(node, name) for name in ("q", "k", "v", "g", "beta", "state"))
    if input_of(node, "cu_seqlens"):
        raise _refuse(node, "several packed sequences (cu_seqlens)")
    if input_of(node, "state_in_index") or input_of(node, "state_out_index"):
        raise _refuse(node, "a state pool with slot indices")
    if output_of(node, "token_states"):
        raise _refuse(node, "per-token states")
    attrs = attrs_of(node)
    q_shape, v_shape = _heads_known(g, q), _heads_known(g, v)
    if q_shape is None or v_shape is None:
        raise _refuse(node, "inputs of unknown head counts or head dims")
    packed = len(q_shape) == 3
    H, K = q_shape[-2:]
    HV, V = v_shape[-2:]
    scale = attrs.scale if attrs.scale is not None else K ** -0.5
    if scale == 0.0:
        raise _refuse(node, "scale 0 (LinearAttention reads 0 as 1/sqrt(d_k))")
    name = node.name or "gdn"
    e = GraphBuilder(g, position=g.position(nid), prefix=f"{name}_", const_hint=f"{name}_c")
    if packed:  # one sequence: a batch of one
        q, k, v, gate, beta = (e.unsqueeze(x, 0) for x in (q, k, v, gate, beta))
    if attrs.qk_l2norm:
        q, k = (e.l2_norm(x, L2NORM_EPS) for x in (q, k))
    q_heads = H if attrs.head_map == "interleave" else HV
    if q_heads != H:  # LinearAttention's fewer query heads map interleaved; tile needs a gather
        heads = (np.arange(HV) % H).tolist()
        q, k = (e.op("Gather", x, e.const(heads), axis=2) for x in (q, k))
    flat = e.const([0, 0, -1])
    query, key, value = (e.op("Reshape", x, flat) for x in (q, k, v))
    decay = e.op("Reshape", gate, flat)  # [B,T,HV] stays, [B,T,HV,K] -> [B,T,HV*K]
    if state and attrs.state_layout == "vk":
        state = e.op("Transpose", state, perm=[0, 1, 3, 2])
    out, present = e.ops(
        "LinearAttention", [query, key, value, state, decay, beta], 2, domain=ORT_DOMAIN,
        q_num_heads=q_heads, kv_num_heads=HV, update_rule="gated_delta", scale=float(scale),
    )
    o_shape = [0, 0, HV, V] if not packed else [-1, HV, V]
    if packed:
        out = e.squeeze(out, [0])
    o_name, final = output_of(node, "o"), output_of(node, "final_state")
    g.remove_node(nid)
    e.op("Reshape", out, e.const(o_shape), out=o_name)
    if final:
        if attrs.state_layout == "vk":
            e.op("Transpose", present, out=final, perm=[0, 1, 3, 2])
        else:
            e.op("Identity", present, out=final)


def lower_to_linear_attention(model: Model) -> int:
    """Lower every fused node of the main graph; returns how many. EmitError if one cannot."""
    g = model.graph
    fused = [nid for nid in g.node_ids() if is_fused(g.node(nid))]
    for nid in fused:
        _lower(g, nid)
    if fused:
        model.opset_imports.setdefault(ORT_DOMAIN, 1)
        if not any(n.domain == DOMAIN for _, n in g.nodes()):
            model.opset_imports.pop(DOMAIN, None)
    return len(fused)
