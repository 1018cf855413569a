"""fp64 reference of the GatedDeltaNet op (SPEC §2.1/§2.2): the oracle for every kernel."""

from __future__ import annotations

import torch

from gdnc.lowering.gated_delta_net.checks import validate
from gdnc.opset.gated_delta_net import L2NORM_EPS


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + L2NORM_EPS)


def gated_delta_net_reference(
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
) -> torch.Tensor:
    """Run the gated delta rule over packed sequences in float64; return o [T_total, HV, V].

    Shapes: q, k [T_total, H, K]; v [T_total, HV, V]; g [T_total, HV] (GDA) or
    [T_total, HV, K] (KDA); beta [T_total, HV]; state_pool [P, HV, K, V] ("kv") or
    [P, HV, V, K] ("vk"), updated in place in its own dtype; cu_seqlens int64 [N+1];
    state_in_index int64 [N] (default arange(N); negative: start from zeros); state_out_index
    int64 [N] (default state_in_index; negative: not written); token_states, when given, an
    output [T_total, HV, K, V] (layout as the pool) receiving the state after every token.
    o has v's dtype. Every sequence reads its initial state before any final state is
    written, so out slots may alias other sequences' in slots. A length-0 sequence writes its
    initial state (zeros when its in index is negative) to its out slot.
    """
    shp = validate(
        q, k, v, g, beta, state_pool, cu_seqlens, state_in_index, state_out_index,
        head_map=head_map, state_layout=state_layout, token_states=token_states,
    )
    f64 = torch.float64
    out_dtype = v.dtype
    q, k, v, g, beta = (x.to(f64) for x in (q, k, v, g, beta))
    if qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    heads = torch.arange(shp.HV, device=q.device)
    key_head = heads // shp.group if head_map == "interleave" else heads % shp.H
    q, k = q[:, key_head], k[:, key_head]  # [T_total, HV, K]
    scale = shp.K**-0.5 if scale is None else float(scale)
    decay = torch.exp(g)
    decay = decay[..., None] if shp.kda else decay[..., None, None]  # broadcast over [HV, K, V]

    pool = state_pool if state_layout == "kv" else state_pool.transpose(-1, -2)  # [P, HV, K, V]
    states = None
    if token_states is not None:
        states = token_states if state_layout == "kv" else token_states.transpose(-1, -2)

    cu = cu_seqlens.tolist()
    ins = list(range(shp.N)) if state_in_index is None else state_in_index.tolist()
    outs = ins if state_out_index is None else state_out_index.tolist()
    initial = [
        pool[slot].to(f64, copy=True) if slot >= 0
        else torch.zeros(shp.HV, shp.K, shp.V, dtype=f64, device=q.device)
        for slot in ins
    ]

    o = torch.empty(shp.T_total, shp.HV, shp.V, dtype=f64, device=q.device)
    finals = []
    for n, S in enumerate(initial):
        for t in range(cu[n], cu[n + 1]):
            S = S * decay[t]
            u = torch.einsum("hkv,hk->hv", S, k[t])
            delta = beta[t][:, None] * (v[t] - u)
            S = S + torch.einsum("hk,hv->hkv", k[t], delta)
            o[t] = scale * torch.einsum("hkv,hk->hv", S, q[t])
            if states is not None:
                states[t].copy_(S)
        finals.append(S)
    for slot, S in zip(outs, finals, strict=True):
        if slot >= 0:
            pool[slot].copy_(S)
    return o.to(out_dtype)
