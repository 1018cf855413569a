"""Public GatedDeltaNet API: the pool form, the functional form and the fused graph node.

Backends (``backends.BACKENDS``): "reference" (fp64 oracle, any device), "cpu" (vectorised
torch kernels), "triton" (GPU kernels); "auto" picks the CPU kernels for CPU tensors, Triton
for CUDA ones and the oracle for what no kernel takes (fp64). Each kernel backend has a
recurrent and a chunked algorithm; "auto" picks per sequence by length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from gdnc.errors import OpArgumentError
from gdnc.lowering.gated_delta_net.backends import ALGORITHMS, Backend, GdnCall, select_backend
from gdnc.lowering.gated_delta_net.call_plan import CallPlan, Launch, plan_for
from gdnc.lowering.gated_delta_net.checks import GdnShapes, index_values, validate
from gdnc.lowering.gated_delta_net.launch import GdnLaunch, GdnOptions
from gdnc.lowering.gated_delta_net.reference import gated_delta_net_reference
from gdnc.lowering.host_values import capturing
from gdnc.opset.gated_delta_net import INPUTS, OUTPUTS, REQUIRED_INPUTS, GdnAttrs, by_position


def _output(out: torch.Tensor | None, shp: GdnShapes, v: torch.Tensor) -> torch.Tensor:
    want = [shp.T_total, shp.HV, shp.V]
    if out is None:
        return torch.empty(want, dtype=v.dtype, device=v.device)
    if list(out.shape) != want or out.dtype != v.dtype or out.device != v.device \
            or not out.is_contiguous():
        raise OpArgumentError(f"gated_delta_net: out: must be a contiguous {v.dtype} tensor of "
                              f"shape {want} on {v.device}, got {out.dtype} {list(out.shape)}")
    return out


def _index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def _launch_indices(shp: GdnShapes, seqs: list[int], ins: list[int], outs: list[int],
                    device: torch.device) -> torch.Tensor:
    """[4, n] int64 on ``device`` (starts, lengths, in slots, out slots of ``seqs``), built on
    the host and sent in one transfer."""
    rows = ([shp.seq_starts[n] for n in seqs], [shp.seq_lens[n] for n in seqs],
            [ins[n] for n in seqs], [outs[n] for n in seqs])
    return _index([x for row in rows for x in row], device).view(4, len(seqs))


def gated_delta_net(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state_pool: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_in_index: torch.Tensor | None = None,
    state_out_index: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    qk_l2norm: bool = False,
    head_map: str = "interleave",
    state_layout: str = "kv",
    token_states: torch.Tensor | None = None,
    backend: str = "auto",
    algorithm: str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool form, packed layout; returns o [T_total, HV, V] in v's dtype (written into
    ``out`` when given: contiguous, that shape and dtype).

    q, k [T_total, H, K]; v [T_total, HV, V]; g [T_total, HV] or [T_total, HV, K]; beta
    [T_total, HV]; state_pool [P, HV, K, V] ("kv") or [P, HV, V, K] ("vk"), updated in place;
    cu_seqlens int64 [N+1]; state_in_index / state_out_index int64 [N] (see
    ``gated_delta_net_reference``); token_states optional output [T_total, HV, K, V] (or vk).
    ``backend``: "auto" (fp64 calls the reference, CUDA ones Triton, others the CPU kernels), "cpu",
    "triton", "reference"; ``algorithm``: "auto" (per sequence: chunked from the backend's
    ``chunked_min_tokens`` on), "recurrent", "chunked". A mixed batch runs as at most two
    launches.
    """
    if algorithm not in ("auto", *ALGORITHMS):
        raise OpArgumentError(
            f"gated_delta_net: algorithm {algorithm!r} is not one of {['auto', *ALGORITHMS]}"
        )
    values = index_values(cu_seqlens, state_in_index, state_out_index)
    operands = (q, k, v, g, beta, state_pool, token_states)
    options = (backend, algorithm, head_map, state_layout, out is None)

    def make() -> CallPlan:
        return _plan(operands, cu_seqlens, state_in_index, state_out_index, values, options)

    if capturing(q):  # a CUDA graph's launches read the index tensors themselves: no plan kept
        plan = _plan(operands, cu_seqlens, state_in_index, state_out_index, values, options,
                     captured=True)
    else:
        plan = make() if values is None else plan_for(
            operands, (cu_seqlens, state_in_index, state_out_index), values, options, make)
    shp = plan.shapes
    o = _output(out, shp, v)
    if plan.backend.oracle:
        o_ref = gated_delta_net_reference(
            q, k, v, g, beta, state_pool, cu_seqlens, state_in_index, state_out_index,
            scale=scale, qk_l2norm=qk_l2norm, head_map=head_map, state_layout=state_layout,
            token_states=token_states,
        )
        return o_ref if out is None else o.copy_(o_ref)
    opts = GdnOptions(scale=shp.K**-0.5 if scale is None else float(scale), qk_l2norm=qk_l2norm,
                      head_map=head_map, state_layout=state_layout)
    state_src = state_pool if plan.snapshot is None else state_pool[plan.snapshot]
    for launch in plan.launches:
        starts, lengths, in_index, out_index = launch.indices
        plan.backend.kernel(launch.algorithm)(GdnLaunch(
            q=q, k=k, v=v, g=g, beta=beta, o=o, state_src=state_src, state_dst=state_pool,
            starts=starts, lengths=lengths, in_index=in_index, out_index=out_index,
            token_states=token_states, shapes=shp, opts=opts, max_len=launch.max_len,
        ))
    return o


def _plan(operands: tuple, cu_seqlens: torch.Tensor, state_in_index: torch.Tensor | None,
          state_out_index: torch.Tensor | None, values: list[list[int] | None] | None,
          options: tuple, captured: bool = False) -> CallPlan:
    """Validate a call, choose its backend and lay out its launches (``call_plan``).
    ``captured``: the call is being captured in a CUDA graph, replayed later with other index
    values: its one launch reads them from the index tensors on the device (``_captured``)."""
    q, k, v, g, beta, state_pool, token_states = operands
    backend, algorithm, head_map, state_layout, _ = options
    chosen = select_backend(backend, GdnCall(
        {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state_pool": state_pool}))
    shp = validate(
        q, k, v, g, beta, state_pool, cu_seqlens, state_in_index, state_out_index,
        head_map=head_map, state_layout=state_layout, token_states=token_states, host=values,
    )
    device = q.device
    ins, outs = list(shp.in_slots), list(shp.out_slots)
    reader = {slot: n for n, slot in enumerate(ins) if slot >= 0}
    # an out slot is another sequence's in slot: snapshot the in states first
    overlap = any(slot >= 0 and reader.get(slot, n) != n for n, slot in enumerate(outs))
    groups: dict[str, list[int]] = {}
    if not chosen.oracle:
        for n, length in enumerate(shp.seq_lens):
            groups.setdefault(chosen.algorithm_for(algorithm, length), []).append(n)
    if captured:
        return _captured(shp, chosen, overlap, groups, cu_seqlens, state_in_index, state_out_index)
    snapshot = None
    if overlap:
        snapshot = _index([max(s, 0) for s in ins], device)
        ins = [n if slot >= 0 else -1 for n, slot in enumerate(ins)]
    launches = tuple(Launch(algo, _launch_indices(shp, seqs, ins, outs, device),
                            max(shp.seq_lens[n] for n in seqs)) for algo, seqs in groups.items())
    return CallPlan(shp, chosen, snapshot, launches)


def _captured(shp: GdnShapes, chosen: Backend, overlap: bool, groups: dict[str, list[int]],
              cu_seqlens: torch.Tensor, state_in_index: torch.Tensor | None,
              state_out_index: torch.Tensor | None) -> CallPlan:
    """The plan of a call captured in a CUDA graph: ONE launch over every sequence in order,
    its index rows computed on the device from ``cu_seqlens`` and the slot tensors, so that a
    replay with other values (the same shapes, one algorithm, no slot written that another
    sequence reads) launches right. OpArgumentError for a call that needs more."""
    if overlap or len(groups) != 1:
        raise OpArgumentError("gated_delta_net: a call that needs a state snapshot or two algorithms "
                              "cannot be captured in a CUDA graph")
    ((algorithm, seqs),) = groups.items()
    ins = torch.arange(shp.N, dtype=torch.int64, device=cu_seqlens.device) if state_in_index is None \
        else state_in_index
    outs = ins if state_out_index is None else state_out_index
    indices = torch.stack([cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1], ins, outs])
    return CallPlan(shp, chosen, None, (Launch(algorithm, indices, max(shp.seq_lens[n] for n in seqs)),))


def _flatten_batch(
    name: str, x: torch.Tensor, ranks: tuple[int, ...], B: int, T: int
) -> torch.Tensor:
    if x.dim() not in ranks or list(x.shape[:2]) != [B, T]:
        raise OpArgumentError(
            f"gated_delta_net: {name}: shape {list(x.shape)} does not fit the batch layout "
            f"[B={B}, T={T}, ...] of q"
        )
    return x.reshape(B * T, *x.shape[2:])


def run_fused_node(
    inputs: Sequence[torch.Tensor | None],
    attrs: GdnAttrs,
    num_outputs: int,
    *,
    backend: str = "auto",
    algorithm: str = "auto",
    in_place: bool = False,
) -> list[torch.Tensor]:
    """Execute one ``ai.gdnc::GatedDeltaNet`` node functionally (contract: ``gdnc.opset.gated_delta_net``).

    ``inputs`` follow ``INPUTS`` (trailing ones may be dropped, optional ones None);
    returns the first ``num_outputs`` of [o, final_state, token_states]. No input is mutated:
    the state/pool is copied before the update, unless ``in_place`` (the caller gives the
    pool away: a contiguous pool is then updated and returned as it is). Batch layout
    ([B, T, ...], N = B) runs packed with cu_seqlens = arange(B+1)*T; o comes back as
    [B, T, HV, V], token_states stays [B*T, HV, K, V]. Without a state input the states start
    from zeros in fp32 (fp64 when v is fp64).
    """
    if not 1 <= num_outputs <= len(OUTPUTS):
        raise OpArgumentError(f"GatedDeltaNet: {num_outputs} outputs requested, 1..{len(OUTPUTS)} exist")
    if len(inputs) > len(INPUTS):
        raise OpArgumentError(f"GatedDeltaNet: {len(inputs)} inputs given, at most {len(INPUTS)} exist")
    named = dict(zip(INPUTS, inputs))
    for name in REQUIRED_INPUTS:
        if named.get(name) is None:
            raise OpArgumentError(f"GatedDeltaNet: required input {name!r} is missing")
    q, k, v, g, beta = (cast(torch.Tensor, named[name]) for name in REQUIRED_INPUTS)
    state, cu_seqlens = named.get("state"), named.get("cu_seqlens")
    state_in_index, state_out_index = named.get("state_in_index"), named.get("state_out_index")

    if q.dim() not in (3, 4) or v.dim() != q.dim():
        raise OpArgumentError(
            f"gated_delta_net: q, v: shapes {list(q.shape)}, {list(v.shape)} are neither both "
            "rank 4 (batch layout) nor both rank 3 (packed layout)"
        )
    batch_shape = None
    if q.dim() == 4:
        if cu_seqlens is not None:
            raise OpArgumentError("gated_delta_net: cu_seqlens: only valid with the packed layout")
        B, T = q.shape[:2]
        batch_shape = [B, T]
        q = q.reshape(B * T, *q.shape[2:])
        k = _flatten_batch("k", k, (4,), B, T)
        v = _flatten_batch("v", v, (4,), B, T)
        g = _flatten_batch("g", g, (3, 4), B, T)
        beta = _flatten_batch("beta", beta, (3,), B, T)
        cu_seqlens = torch.arange(B + 1, dtype=torch.int64, device=q.device) * T
    elif cu_seqlens is None:
        cu_seqlens = torch.tensor([0, q.shape[0]], dtype=torch.int64, device=q.device)

    N = max(cu_seqlens.numel() - 1, 0)
    K, HV, V = q.shape[-1], v.shape[-2], v.shape[-1]
    state_dims = [K, V] if attrs.state_layout == "kv" else [V, K]
    if state is None:
        if state_in_index is not None or state_out_index is not None:
            raise OpArgumentError("GatedDeltaNet: state_in_index/state_out_index need a state")
        dtype = torch.promote_types(v.dtype, torch.float32)
        pool = torch.zeros(N, HV, *state_dims, dtype=dtype, device=q.device)
    else:
        if state_in_index is None and state_out_index is None and list(state.shape[:1]) != [N]:
            raise OpArgumentError(
                f"gated_delta_net: state: without state indices it must hold the N = {N} "
                f"initial states, got shape {list(state.shape)}"
            )
        pool = state if in_place and state.is_contiguous() else state.clone()
    token_states = None
    if num_outputs == 3:
        token_states = torch.empty(q.shape[0], HV, *state_dims, dtype=pool.dtype, device=q.device)

    o = gated_delta_net(
        q, k, v, g, beta, pool, cu_seqlens, state_in_index, state_out_index,
        scale=attrs.scale, qk_l2norm=attrs.qk_l2norm, head_map=attrs.head_map,
        state_layout=attrs.state_layout, token_states=token_states,
        backend=backend, algorithm=algorithm,
    )
    if batch_shape is not None:
        o = o.reshape(*batch_shape, *o.shape[1:])
    outputs = [o, pool] if token_states is None else [o, pool, token_states]
    return outputs[:num_outputs]


def gated_delta_net_functional(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    qk_l2norm: bool = False,
    head_map: str = "interleave",
    state_layout: str = "kv",
    backend: str = "auto",
    algorithm: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional form; returns (o in the input layout, final_state [N, HV, K, V] or vk).

    Batch layout: q, k [B, T, H, K], v [B, T, HV, V], g [B, T, HV] or [B, T, HV, K], beta
    [B, T, HV] (N = B, no cu_seqlens). Packed layout: as ``gated_delta_net`` with cu_seqlens
    defaulting to one sequence. initial_state [N, HV, K, V] ("kv") / [N, HV, V, K] ("vk") or
    None (zeros; fp32, fp64 when v is fp64). Inputs are never mutated.
    """
    attrs = GdnAttrs(scale=scale, qk_l2norm=qk_l2norm, head_map=head_map,
                     state_layout=state_layout)
    inputs = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state": initial_state,
              "cu_seqlens": cu_seqlens}
    o, final_state = run_fused_node(
        by_position(inputs, INPUTS, None), attrs, 2,
        backend=backend, algorithm=algorithm,
    )
    return o, final_state
