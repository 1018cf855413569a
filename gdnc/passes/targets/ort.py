"""The "ort" target: each fused node becomes onnxruntime's ``com.microsoft::LinearAttention``.

LinearAttention (update_rule "gated_delta") takes query/key/value packed as [B, T, heads*D],
a per-head log-decay [B, T, H_kv] or per-key [B, T, H_kv*d_k], beta [B, T, H_kv] and a
key-major state [B, H_kv, d_k, d_v]. With fewer query heads than kv heads ("inverse GQA"),
query (and key) head h serves value heads h*r .. h*r+r-1: gdnc's "interleave" map, passed as
is; a "tile" map gathers q and k up to HV heads first. q and k are l2-normalised outside when
``qk_l2norm`` is set; a value-major state is transposed in and out. A packed single sequence is
lowered as a batch of one.

Packed sequences over a state pool (``cu_seqlens`` with ``state_in_index``, as a GGUF model's
batch graph has them) become a padded batch around it: token j of sequence n is row
``cu[n] + j`` of the packed inputs for j < its length, padding positions read row 0 with
g = 0 and beta = 0 there (the delta rule then leaves the state as it is: the final states are
exact), the initial states are gathered from the pool (zeros for a negative slot), the outputs
of the real positions gathered back into packed rows and the final states scattered into a
copy of the pool (a negative ``state_out_index`` writes nothing; it defaults to
``state_in_index``).

What it cannot express (EmitError names the node): packed multi-sequence input (``cu_seqlens``)
without a state pool, slot indices without packed sequences, per-token states, and head counts
or head dims that are not known ints (batch and time may be symbolic).
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


class _Padded:
    """The packed sequences of ``cu_seqlens`` [N+1] as a padded batch [N, L] (L: the longest)."""

    def __init__(self, e: GraphBuilder, cu: str) -> None:
        self.e = e
        starts = e.slice(cu, 0, 0, -1)
        lengths = e.op("Sub", e.slice(cu, 0, 1, np.iinfo(np.int64).max), starts)
        steps = e.op("Range", e.const(0), e.op("ReduceMax", lengths, keepdims=0), e.const(1))  # [L]
        self.valid = e.op("Less", e.unsqueeze(steps, 0), e.unsqueeze(lengths, 1))  # [N, L]
        rows = e.op("Add", e.unsqueeze(starts, 1), e.unsqueeze(steps, 0))
        self.rows = e.op("Where", self.valid, rows, e.const(0))

    def gather(self, packed: str) -> str:
        """[T, ...] -> [N, L, ...]: padding repeats row 0."""
        return self.e.op("Gather", packed, self.rows, axis=0)

    def zero_padding(self, x: str) -> str:
        """x [N, L, D] with 0 at the padding positions."""
        return self.e.op("Where", self.e.unsqueeze(self.valid, 2), x, self.e.const(0.0, np.float32))

    def packed_rows(self, x: str, width: int) -> str:
        """x [N, L, width] -> [T, width]: the real positions, in packing order."""
        positions = self.e.squeeze(self.e.op("NonZero", self.e.reshape(self.valid, [-1])), [0])
        return self.e.op("Gather", self.e.reshape(x, [-1, width]), positions, axis=0)


def _lower(g: Graph, nid: int) -> None:
    node = g.node(nid)
    q, k, v, gate, beta, state = (input_of(node, name) for name in ("q", "k", "v", "g", "beta", "state"))
    cu, slots_in = input_of(node, "cu_seqlens"), input_of(node, "state_in_index")
    slots_out = input_of(node, "state_out_index") or slots_in
    pooled = bool(cu and slots_in and state)
    if cu and not pooled:
        raise _refuse(node, "several packed sequences (cu_seqlens) without a state pool")
    if slots_out and not pooled:
        raise _refuse(node, "a state pool with slot indices outside packed sequences (cu_seqlens)")
    if output_of(node, "token_states"):
        raise _refuse(node, "per-token states")
    attrs = attrs_of(node)
    q_shape, v_shape = _heads_known(g, q), _heads_known(g, v)
    if q_shape is None or v_shape is None:
        raise _refuse(node, "inputs of unknown head counts or head dims")
    single = len(q_shape) == 3 and not pooled  # one packed sequence
    H, K = q_shape[-2:]
    HV, V = v_shape[-2:]
    scale = attrs.scale if attrs.scale is not None else K ** -0.5
    if scale == 0.0:
        raise _refuse(node, "scale 0 (LinearAttention reads 0 as 1/sqrt(d_k))")
    name = node.name or "gdn"
    e = GraphBuilder(g, position=g.position(nid), prefix=f"{name}_", const_hint=f"{name}_c")
    vk = attrs.state_layout == "vk"
    pool, padded = state, _Padded(e, cu) if pooled else None
    if padded is not None:
        q, k, v, gate, beta = (padded.gather(x) for x in (q, k, v, gate, beta))
        state = _gather_slots(e, pool, slots_in)
    if single:
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
    if padded is not None:
        decay, beta = padded.zero_padding(decay), padded.zero_padding(beta)
    if state and vk:
        state = e.op("Transpose", state, perm=[0, 1, 3, 2])
    out, present = e.ops(
        "LinearAttention", [query, key, value, state, decay, beta], 2, domain=ORT_DOMAIN,
        q_num_heads=q_heads, kv_num_heads=HV, update_rule="gated_delta", scale=float(scale),
    )
    o_name, final = output_of(node, "o"), output_of(node, "final_state")
    g.remove_node(nid)
    if padded is not None:
        out = padded.packed_rows(out, HV * V)
    elif single:
        out = e.squeeze(out, [0])
    e.op("Reshape", out, e.const([-1, HV, V] if padded is not None or single else [0, 0, HV, V]), out=o_name)
    if final:
        if vk:
            present = e.op("Transpose", present, perm=[0, 1, 3, 2])
        if padded is not None:
            _scatter_slots(e, pool, slots_out, present, final)
        else:
            e.op("Identity", present, out=final)


def _gather_slots(e: GraphBuilder, pool: str, slots: str) -> str:
    """The states [N, ...] in ``pool`` [P, ...] at ``slots`` [N] (zeros for a negative slot)."""
    states = e.op("Gather", pool, e.op("Max", slots, e.const(0)), axis=0)
    live = e.op("GreaterOrEqual", slots, e.const(0))
    live = e.op("Reshape", live, e.const([-1, 1, 1, 1]))
    return e.op("Where", live, states, e.const(0.0, np.float32))


def _scatter_slots(e: GraphBuilder, pool: str, slots: str, states: str, out: str) -> None:
    """``pool`` with ``states`` [N, ...] written at ``slots`` [N] (none at a negative slot), as ``out``."""
    kept = e.squeeze(e.op("NonZero", e.op("GreaterOrEqual", slots, e.const(0))), [0])
    rows = e.unsqueeze(e.op("Gather", slots, kept, axis=0), 1)
    e.op("ScatterND", pool, rows, e.op("Gather", states, kept, axis=0), out=out)


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
