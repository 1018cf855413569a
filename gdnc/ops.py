"""Public GatedDeltaNet API: the pool form, the functional form and the fused graph node.

Backends: "reference" (fp64, any device torch supports); "auto" picks the best available one,
today always "reference". "cpu" and "triton" are reserved for the kernels to come. Algorithms:
"auto", "recurrent", "chunked"; the reference computes all of them with the fp64 recurrence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch

from gdnc.errors import OpArgumentError
from gdnc.fused_op import INPUTS, OUTPUTS, GdnAttrs
from gdnc.lowering.gated_delta_net import gated_delta_net_reference

BACKENDS = ("auto", "reference", "cpu", "triton")
ALGORITHMS = ("auto", "recurrent", "chunked")


def _select(backend: str, algorithm: str) -> Callable[..., torch.Tensor]:
    if algorithm not in ALGORITHMS:
        raise OpArgumentError(
            f"gated_delta_net: algorithm {algorithm!r} is not one of {list(ALGORITHMS)}"
        )
    if backend in ("auto", "reference"):
        return gated_delta_net_reference
    if backend in BACKENDS:
        raise OpArgumentError(f"backend {backend!r} is not available yet")
    raise OpArgumentError(f"gated_delta_net: backend {backend!r} is not one of {list(BACKENDS)}")


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
) -> torch.Tensor:
    """Pool form, packed layout; returns o [T_total, HV, V] in v's dtype.

    q, k [T_total, H, K]; v [T_total, HV, V]; g [T_total, HV] or [T_total, HV, K]; beta
    [T_total, HV]; state_pool [P, HV, K, V] ("kv") or [P, HV, V, K] ("vk"), updated in place;
    cu_seqlens int64 [N+1]; state_in_index / state_out_index int64 [N] (see
    ``gated_delta_net_reference``); token_states optional output [T_total, HV, K, V] (or vk).
    """
    impl = _select(backend, algorithm)
    return impl(
        q, k, v, g, beta, state_pool, cu_seqlens, state_in_index, state_out_index,
        scale=scale, qk_l2norm=qk_l2norm, head_map=head_map, state_layout=state_layout,
        token_states=token_states,
    )


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
) -> list[torch.Tensor]:
    """Execute one ``ai.gdnc::GatedDeltaNet`` node functionally (contract: ``gdnc.fused_op``).

    ``inputs`` follow ``fused_op.INPUTS`` (trailing ones may be dropped, optional ones None);
    returns the first ``num_outputs`` of [o, final_state, token_states]. No input is mutated:
    the state/pool is copied before the update. Batch layout ([B, T, ...], N = B) runs packed
    with cu_seqlens = arange(B+1)*T; o comes back as [B, T, HV, V], token_states stays
    [B*T, HV, K, V]. Without a state input the states start from zeros in fp32 (fp64 when v
    is fp64).
    """
    if not 1 <= num_outputs <= len(OUTPUTS):
        raise OpArgumentError(f"GatedDeltaNet: {num_outputs} outputs requested, 1..3 exist")
    if len(inputs) > len(INPUTS):
        raise OpArgumentError(f"GatedDeltaNet: {len(inputs)} inputs given, at most 9 exist")
    padded = [*inputs, *[None] * (len(INPUTS) - len(inputs))]
    for name, x in zip(INPUTS[:5], padded[:5], strict=True):
        if x is None:
            raise OpArgumentError(f"GatedDeltaNet: required input {name!r} is missing")
    q, k, v, g, beta = cast("list[torch.Tensor]", padded[:5])
    state, cu_seqlens, state_in_index, state_out_index = padded[5:]

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
        pool = state.clone()
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
    o, final_state = run_fused_node(
        [q, k, v, g, beta, initial_state, cu_seqlens], attrs, 2,
        backend=backend, algorithm=algorithm,
    )
    return o, final_state
