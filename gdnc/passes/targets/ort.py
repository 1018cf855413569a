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
from gdnc.ir.graph import Graph, Model, Node, make_attrs
from gdnc.opset.gated_delta_net import DOMAIN, L2NORM_EPS, attrs_of, input_of, is_fused, output_of
from gdnc.passes.patterns import known_dim, shape_of

ORT_DOMAIN = "com.microsoft"


class _Emitter:
    """Appends nodes next to one fused node."""

    def __init__(self, g: Graph, position: float, name: str) -> None:
        self.g, self.position, self.name = g, position, name

    def op(self, op_type: str, inputs: list[str], domain: str = "", outputs: int = 1, **attrs) -> list[str]:
        outs = [self.g.fresh_name(f"{self.name}_{op_type.lower()}") for _ in range(outputs)]
        self.g.add_node(Node(op_type, inputs, outs, domain=domain, attrs=make_attrs(**attrs)),
                        self.position)
        return outs

    def const(self, values: list[int] | float, dtype=np.int64) -> str:
        return self.g.constant(np.array(values, dtype=dtype), f"{self.name}_c")


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
    e = _Emitter(g, g.position(nid), node.name or "gdn")
    if packed:  # one sequence: a batch of one
        q, k, v, gate, beta = (e.op("Unsqueeze", [x, e.const([0])])[0] for x in (q, k, v, gate, beta))
    if attrs.qk_l2norm:
        q, k = (_l2norm(e, x) for x in (q, k))
    q_heads = H if attrs.head_map == "interleave" else HV
    if q_heads != H:  # LinearAttention's fewer query heads map interleaved; tile needs a gather
        heads = (np.arange(HV) % H).tolist()
        q, k = (e.op("Gather", [x, e.const(heads)], axis=2)[0] for x in (q, k))
    flat = e.const([0, 0, -1])
    query, key, value = (e.op("Reshape", [x, flat])[0] for x in (q, k, v))
    decay = e.op("Reshape", [gate, flat])[0]  # [B,T,HV] stays, [B,T,HV,K] -> [B,T,HV*K]
    if state and attrs.state_layout == "vk":
        state = e.op("Transpose", [state], perm=[0, 1, 3, 2])[0]
    out, present = e.op(
        "LinearAttention", [query, key, value, state, decay, beta], domain=ORT_DOMAIN, outputs=2,
        q_num_heads=q_heads, kv_num_heads=HV, update_rule="gated_delta", scale=float(scale),
    )
    o_shape = [0, 0, HV, V] if not packed else [-1, HV, V]
    if packed:
        out = e.op("Squeeze", [out, e.const([0])])[0]
    o_name, final = output_of(node, "o"), output_of(node, "final_state")
    g.remove_node(nid)
    g.add_node(Node("Reshape", [out, e.const(o_shape)], [o_name]), e.position)
    if final:
        if attrs.state_layout == "vk":
            g.add_node(Node("Transpose", [present], [final], attrs=make_attrs(perm=[0, 1, 3, 2])),
                       e.position)
        else:
            g.add_node(Node("Identity", [present], [final]), e.position)


def _l2norm(e: _Emitter, x: str) -> str:
    """x / sqrt(sum(x*x, -1) + L2NORM_EPS) over the key dim (SPEC §2.1)."""
    sq = e.op("Mul", [x, x])[0]
    total = e.op("ReduceSum", [sq, e.const([-1])], keepdims=1)[0]
    eps = e.g.constant(np.array(L2NORM_EPS, dtype=np.float32), f"{e.name}_eps")
    norm = e.op("Sqrt", [e.op("Add", [total, eps])[0]])[0]
    return e.op("Div", [x, norm])[0]


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
