"""The "native" target: an ONNX function body for every ``ai.gdnc::GatedDeltaNet`` node.

onnxruntime has no ai.gdnc kernel, so each fused node gets a model-local FunctionProto
(domain "ai.gdnc", name "GatedDeltaNet") made of standard ops. Configurations need different
graphs, so there is one body per configuration, chosen by the node's ``overload`` (IR 10;
onnxruntime 1.31 honours it). ``scale`` is read from the node through ``ref_attr_name``, so
every scale value shares one body; a node without it gets a body computing K**-0.5.

Body (state kept kv internally; compute dtype fp32, fp64 when v is fp64):
  prep over all tokens: Cast, optional l2norm, head gather (interleave: key head hv // (HV/H),
    tile: hv % H), q *= scale, exp(g), unsqueezes to matmul shapes;
  initial states [N, HV, K, V]: zeros, the state input, or Gather(pool, state_in_index) with
    negative slots -> zeros;
  recurrence: a Scan over time carrying S [B, HV, K, V] (batch: B = N; packed with one
    sequence: B = 1); packed with cu_seqlens: a Loop over the sequences, each a B = 1 Scan
    over its token slice (exact work, final states come out as a Loop scan output);
  outputs: o CastLike v; final states CastLike state, or ScatterND into a copy of the pool
    (a negative out slot writes a scratch row that is sliced off); token states alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from gdnc.errors import EmitError
from gdnc.ir.builder import INT64, GraphBuilder
from gdnc.ir.graph import Attr, Graph, Model, Node
from gdnc.ir.to_onnx import graph_to_proto
from gdnc.opset.gated_delta_net import (
    ATTRIBUTES,
    DOMAIN,
    HEAD_MAPS,
    INPUTS,
    L2NORM_EPS,
    OP_TYPE,
    OPSET_VERSION,
    OUTPUTS,
    REQUIRED_INPUTS,
    STATE_LAYOUTS,
    attrs_of,
    input_of,
    is_fused,
)

MIN_IR_VERSION = 10  # FunctionProto.overload / NodeProto.overload
MIN_OPSET = 17  # default-domain opset of the bodies (they need >= 15: Shape start/end, CastLike)
# Raising a default opset below 13 would change existing Squeeze/Unsqueeze/ReduceSum/Split nodes.
MIN_RAISABLE_OPSET = 13


@dataclass(frozen=True)
class BodyConfig:
    """Everything that changes the body of one node; ``overload`` names it."""

    packed: bool
    cu_seqlens: bool
    kda: bool
    qk_l2norm: bool
    head_map: str
    state_layout: str
    scale_attr: bool
    state: bool
    in_index: bool
    out_index: bool
    num_outputs: int
    f64: bool

    @property
    def pool(self) -> bool:
        return self.in_index or self.out_index

    @property
    def overload(self) -> str:
        """Deterministic name, e.g. "b4_gda_l2_tile_vk_sa_s_o2" (fields in a fixed order)."""
        layout = ("p3cu" if self.cu_seqlens else "p3") if self.packed else "b4"
        state = "s" if self.state else "z"
        if self.pool:
            state = "pool" + "i" * self.in_index + "o" * self.out_index
        parts = [
            layout, "kda" if self.kda else "gda", "l2" if self.qk_l2norm else "nol2",
            "il" if self.head_map == "interleave" else "tile", self.state_layout,
            "sa" if self.scale_attr else "sd", state, f"o{self.num_outputs}",
        ]
        return "_".join(parts + ["f64"] * self.f64)


def attach_function_bodies(model: Model) -> int:
    """Give every GatedDeltaNet node (subgraphs included) its body; return how many nodes.

    Adds one FunctionProto per distinct configuration (replacing a stale one of the same
    overload), sets each node's ``overload``, drops trailing empty outputs, raises the IR
    version to 10 and the default opset to >= 17, and imports "ai.gdnc". Functions share the
    model's default opset (onnxruntime and the checker reject a different one), so a model
    below opset 13 is refused. Raises EmitError, before changing anything, for a node it
    cannot express.
    """
    found = [(node, body_config(node, scopes)) for node, scopes in _fused_nodes(model.graph, [])]
    if not found:
        return 0
    opset = max(model.opset(""), MIN_OPSET)
    if model.opset("") < MIN_RAISABLE_OPSET:
        raise EmitError(
            f"native target: default opset {model.opset('')} < {MIN_RAISABLE_OPSET}: the bodies "
            f"need {MIN_OPSET}, and raising it would change the meaning of existing nodes; "
            "convert the model with onnx.version_converter first"
        )
    configs = {cfg.overload: cfg for _, cfg in found}
    for node, cfg in found:
        node.outputs = node.outputs[: cfg.num_outputs]
        node.overload = cfg.overload
    model.functions = [
        fn for fn in model.functions
        if not (fn.domain == DOMAIN and fn.name == OP_TYPE and fn.overload in configs)
    ] + [_function(configs[key], opset) for key in sorted(configs)]
    model.opset_imports.pop("ai.onnx", None)
    model.opset_imports[""] = opset
    model.opset_imports.setdefault(DOMAIN, OPSET_VERSION)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return len(found)


def _fused_nodes(graph: Graph, outer: list[Graph]) -> Iterator[tuple[Node, list[Graph]]]:
    scopes = [*outer, graph]
    for _, node in graph.nodes():
        if is_fused(node):
            yield node, scopes
        for sub in node.subgraphs():
            yield from _fused_nodes(sub, scopes)


def _value_info(scopes: list[Graph], name: str) -> tuple[int | None, int]:
    """(rank or None, elem type or 0) of ``name``, looked up from the innermost scope out."""
    for graph in reversed(scopes):
        val = graph.values.get(name)
        if val is not None and (val.shape is not None or val.dtype):
            return (None if val.shape is None else len(val.shape)), val.dtype
    return None, 0


def body_config(node: Node, scopes: list[Graph]) -> BodyConfig:
    """The configuration of ``node``; EmitError when the body cannot express it."""

    def fail(reason: str) -> EmitError:
        label = node.name or (node.outputs[0] if node.outputs else "?")
        return EmitError(f"native target: GatedDeltaNet node {label!r}: {reason}")

    if len(node.inputs) > len(INPUTS):
        raise fail(f"{len(node.inputs)} inputs, at most {len(INPUTS)} exist")
    given = {name: bool(input_of(node, name)) for name in INPUTS}
    missing = [name for name in REQUIRED_INPUTS if not given[name]]
    if missing:
        raise fail(f"required inputs {missing} are missing")
    num_outputs = max((i + 1 for i, x in enumerate(node.outputs) if x), default=0)
    if not 1 <= num_outputs <= len(OUTPUTS) or len(node.outputs) > len(OUTPUTS):
        raise fail(f"outputs {node.outputs} do not fit (o, final_state, token_states)")
    rank_q, _ = _value_info(scopes, input_of(node, "q"))
    rank_g, _ = _value_info(scopes, input_of(node, "g"))
    _, v_dtype = _value_info(scopes, input_of(node, "v"))
    if rank_q not in (3, 4):
        raise fail(f"rank of q is {rank_q or 'unknown'}; 3 (packed) or 4 (batch) is needed")
    if rank_g not in (rank_q - 1, rank_q):
        raise fail(f"rank of g is {rank_g or 'unknown'}; {rank_q - 1} or {rank_q} is needed")
    if rank_q == 4 and given["cu_seqlens"]:
        raise fail("cu_seqlens is only valid with the packed layout")
    if (given["state_in_index"] or given["state_out_index"]) and not given["state"]:
        raise fail("state_in_index/state_out_index need a state input")
    attrs = attrs_of(node)
    head_map, state_layout = attrs.head_map, attrs.state_layout
    if head_map not in HEAD_MAPS or state_layout not in STATE_LAYOUTS:
        raise fail(f"head_map {head_map!r} / state_layout {state_layout!r} unknown")
    return BodyConfig(
        packed=rank_q == 3, cu_seqlens=given["cu_seqlens"], kda=rank_g == rank_q,
        qk_l2norm=attrs.qk_l2norm, head_map=head_map,
        state_layout=state_layout, scale_attr=attrs.scale is not None, state=given["state"],
        in_index=given["state_in_index"], out_index=given["state_out_index"],
        num_outputs=num_outputs, f64=v_dtype == TensorProto.DOUBLE,
    )


def _body(cfg: BodyConfig, opset: int) -> GraphBuilder:
    """A builder of a function body: INPUTS declared, OUTPUTS reserved, constants as nodes."""
    f = GraphBuilder(Graph(OP_TYPE), opset=opset, const_nodes=True,
                     float_type=TensorProto.DOUBLE if cfg.f64 else TensorProto.FLOAT)
    for name in INPUTS:
        f.input(name)
    for name in OUTPUTS:
        f.graph.value(name)  # reserved: fresh names avoid it
    return f


def _zeros(f: GraphBuilder, *dims: str) -> str:
    """Zeros in the compute dtype; ``dims`` are 1-D int64 shape pieces."""
    zero = np.zeros(1, helper.tensor_dtype_to_np_dtype(f.float_type))
    return f.op("ConstantOfShape", f.op("Concat", *dims, axis=0), value=zero)


def _function(cfg: BodyConfig, opset: int) -> onnx.FunctionProto:
    """The body of one configuration (shapes: ``gdnc.opset.gated_delta_net``); declares all of INPUTS
    (absent ones are never read) and OUTPUTS[:num_outputs]."""
    f = _body(cfg, opset)
    ct = f.float_type
    q, k, v, g, beta = (f.op("Cast", x, to=ct) for x in INPUTS[:5])
    if cfg.qk_l2norm:
        q, k = f.l2_norm(q, L2NORM_EPS), f.l2_norm(k, L2NORM_EPS)
    H = f.op("Shape", "q", start=-2, end=-1)
    HV = f.op("Shape", "v", start=-2, end=-1)
    K = f.op("Shape", "q", start=-1)
    V = f.op("Shape", "v", start=-1)
    heads = f.op("Range", f.const(0), f.op("Squeeze", HV), f.const(1))
    if cfg.head_map == "interleave":
        heads = f.op("Div", heads, f.op("Div", HV, H))
    else:
        heads = f.op("Mod", heads, H)
    q, k = (f.op("Gather", x, heads, axis=-2) for x in (q, k))
    if cfg.scale_attr:
        ref = Attr(onnx.AttributeProto.FLOAT, None, ref_attr_name="scale")
        scale = f.op("Cast", f.op("Constant", hint="scale", value_float=ref), to=ct)
    else:
        scale = f.op("Pow", f.op("Cast", K, to=ct), f.float_const(-0.5))
    steps = [
        f.op("Unsqueeze", f.op("Mul", q, scale), f.const([-2])),  # q row   [.., HV, 1, K]
        f.op("Unsqueeze", k, f.const([-2])),  # k row   [.., HV, 1, K]
        f.op("Unsqueeze", k, f.const([-1])),  # k col   [.., HV, K, 1]
        f.op("Unsqueeze", v, f.const([-2])),  # v row   [.., HV, 1, V]
        f.op("Unsqueeze", f.op("Exp", g), f.const([-1] if cfg.kda else [-2, -1])),
        f.op("Unsqueeze", beta, f.const([-2, -1])),  # [.., HV, 1, 1]
    ]
    if not cfg.packed:
        N = f.op("Shape", "q", start=0, end=1)
    elif cfg.cu_seqlens:
        N = f.op("Sub", f.op("Shape", "cu_seqlens"), f.const([1]))
    else:
        N = f.const([1])

    def to_kv(x: str) -> str:  # kv <-> vk (an involution)
        return f.op("Transpose", x, perm=[0, 1, 3, 2]) if cfg.state_layout == "vk" else x

    ins = "state_in_index"
    if cfg.pool and not cfg.in_index:
        ins = f.op("Range", f.const(0), f.op("Squeeze", N), f.const(1))
    if not cfg.state:
        init = _zeros(f, N, HV, K, V)
    elif not cfg.pool:
        init = to_kv(f.op("Cast", "state", to=ct))
    else:
        rows = f.op("Gather", "state", f.op("Max", ins, f.const(0)), axis=0)
        keep = f.op("Unsqueeze", f.op("GreaterOrEqual", ins, f.const(0)), f.const([1, 2, 3]))
        init = f.op("Where", keep, to_kv(f.op("Cast", rows, to=ct)), f.float_const(0.0))

    want_ts = cfg.num_outputs == 3
    if cfg.cu_seqlens:
        final, o, ts = _loop(f, N, init, steps, (HV, K, V), want_ts)
    elif cfg.packed:
        final, o, ts = _scan(f, init, [f.op("Unsqueeze", x, f.const([0])) for x in steps], want_ts)
        o = f.op("Squeeze", o, f.const([0, -2]))
        if ts:
            ts = f.op("Squeeze", ts, f.const([0]))
    else:
        final, o, ts = _scan(f, init, steps, want_ts)
        o = f.op("Squeeze", o, f.const([-2]))
        if ts:
            ts = f.op("Reshape", ts, f.op("Concat", f.const([-1]), HV, K, V, axis=0))

    f.op("CastLike", o, "v", out="o")
    if cfg.num_outputs >= 2:
        final = to_kv(final)
        if cfg.pool:
            outs = "state_out_index" if cfg.out_index else ins
            P = f.op("Shape", "state", start=0, end=1)
            slot = f.op("Where", f.op("GreaterOrEqual", outs, f.const(0)), outs, P)
            zero = f.const([0])
            scratch = f.op("Concat", "state", f.op("Slice", "state", zero, f.const([1])), axis=0)
            pool = f.op("ScatterND", scratch, f.op("Unsqueeze", slot, f.const([-1])),
                        f.op("CastLike", final, "state"))
            f.op("Slice", pool, zero, P, zero, out="final_state")
        else:
            f.op("CastLike" if cfg.state else "Identity", final,
                 *["state"] * cfg.state, out="final_state")
    if want_ts:
        assert ts is not None
        f.op("CastLike" if cfg.state else "Identity", to_kv(ts),
             *["state"] * cfg.state, out="token_states")
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUTS), list(OUTPUTS[: cfg.num_outputs]), graph_to_proto(f.graph).node,
        [helper.make_opsetid("", opset)], attributes=list(ATTRIBUTES), overload=cfg.overload,
    )


def _scan(f: GraphBuilder, init: str, steps: list[str], want_ts: bool) -> tuple[str, str, str | None]:
    """Scan over axis 1 of ``steps`` (q row, k row, k col, v row, decay, beta; [B, T, HV, ..])
    from ``init`` [B, HV, K, V]; returns (final [B, HV, K, V], o [B, T, HV, 1, V],
    token states [B, T, HV, K, V] or None)."""
    body = f.sub("gdn_step")
    S, qr, kr, kc, vr, a, b = (body.input(body.fresh(x), f.float_type)
                               for x in ("S", "q", "kr", "kc", "v", "a", "b"))
    S1 = body.op("Mul", S, a)
    delta = body.op("Mul", body.op("Sub", vr, body.op("MatMul", kr, S1)), b)
    S2 = body.op("Add", S1, body.op("MatMul", kc, delta))
    outs = [S2, body.op("MatMul", qr, S2)] + [body.op("Identity", S2)] * want_ts
    body.set_outputs(outs, [f.float_type] * len(outs))
    res = f.ops("Scan", [init, *steps], len(outs), body=body.graph, num_scan_inputs=len(steps),
                scan_input_axes=[1] * len(steps), scan_output_axes=[1] * (len(outs) - 1))
    return res[0], res[1], res[2] if want_ts else None


def _loop(f: GraphBuilder, N: str, init: str, steps: list[str], dims: tuple[str, str, str],
          want_ts: bool) -> tuple[str, str, str | None]:
    """Loop over the cu_seqlens sequences of packed ``steps`` [T_total, HV, ..], one B = 1 Scan
    each (an If skips it for an empty sequence: onnxruntime's Scan rejects length 0); returns
    (finals [N, HV, K, V], o [T_total, HV, V], token states [T_total, HV, K, V] or None)."""
    HV, K, V = dims
    empty = f.const([0])
    carried = [_zeros(f, empty, HV, V)] + [_zeros(f, empty, HV, K, V)] * want_ts
    body = f.sub("gdn_sequence")
    it, cond, o_acc, ts_acc = (body.fresh(x) for x in ("it", "cond", "o_acc", "ts_acc"))
    zero = body.const([0])
    i = body.op("Unsqueeze", it, zero)
    j = body.op("Add", i, body.const([1]))
    start, end = body.op("Gather", "cu_seqlens", i), body.op("Gather", "cu_seqlens", j)
    init_n = body.op("Slice", init, i, j, zero)  # [1, HV, K, V]

    run = body.sub("gdn_run")
    seq = [run.op("Unsqueeze", run.op("Slice", x, start, end, zero), zero) for x in steps]
    final, o, ts = _scan(run, init_n, seq, want_ts)
    run_outs = [run.op("Squeeze", final, zero), run.op("Squeeze", o, run.const([0, -2]))]
    run_outs += [run.op("Squeeze", ts, zero)] if ts else []
    skip = body.sub("gdn_skip")
    skip_outs = [skip.op("Squeeze", init_n, zero)] + [skip.op("Identity", x) for x in carried]
    types = [f.float_type] * len(run_outs)
    run.set_outputs(run_outs, types)
    skip.set_outputs(skip_outs, types)
    seq_outs = body.ops(
        "If", [body.op("Greater", body.op("Squeeze", body.op("Sub", end, start)), body.const(0))],
        len(run_outs), then_branch=run.graph, else_branch=skip.graph,
    )
    outs = [body.op("Identity", cond)]
    accs = [o_acc] + [ts_acc] * want_ts
    outs += [body.op("Concat", acc, x, axis=0) for acc, x in zip(accs, seq_outs[1:], strict=True)]
    outs.append(seq_outs[0])
    for name, dtype, shape in [(it, INT64, ()), (cond, TensorProto.BOOL, ())] + \
            [(acc, f.float_type, None) for acc in accs]:
        body.input(name, dtype, shape)
    body.set_outputs(outs, [TensorProto.BOOL] + types)
    res = f.ops("Loop", [f.op("Squeeze", N), "", *carried], len(outs) - 1, body=body.graph)
    return res[-1], res[0], res[1] if want_ts else None
