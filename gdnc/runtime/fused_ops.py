"""Registers the ``ai.gdnc`` ops (the fused GatedDeltaNet, Linear and Embed over weights as the
file holds them) and ORT's LinearAttention with the runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gdnc.errors import UnsupportedOpError
from gdnc.lowering.gated_delta_net.api import run_fused_node
from gdnc.lowering.quant.packed import LinearGroup, PackedWeight, embed, linear
from gdnc.opset.gated_delta_net import DOMAIN, INPUT_INDEX, INPUTS, OP_TYPE, GdnAttrs, by_position
from gdnc.opset.packed_weights import EMBED, LINEAR
from gdnc.opset.registry import OpContext, register, specializes


@register(OP_TYPE, domain=DOMAIN)
def gated_delta_net(ctx: OpContext, inputs: list) -> list:
    """The fused node, through the best available kernel (see ``gdnc.lowering.gated_delta_net``)."""
    return run_fused_node(inputs, GdnAttrs.from_onnx(dict(ctx.attrs)), ctx.num_outputs,
                          in_place=INPUT_INDEX["state"] in ctx.donated)


@register(LINEAR, domain=DOMAIN)
def packed_linear(ctx: OpContext, inputs: list) -> list:
    """x @ W^T over a weight bound as the file holds it (or a plain float tensor)."""
    x, w = inputs
    if isinstance(w, PackedWeight):
        return [linear(x, w)]
    return [torch.matmul(x, w.transpose(-1, -2))]


@specializes(packed_linear)
def packed_linear_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Callable[..., Any] | None:
    """A bound weight: x @ W^T by its type, decided once."""
    if set(constants) != {1}:
        return None
    w = constants[1]
    if isinstance(w, PackedWeight):
        group = LinearGroup([w])
        return lambda x: group(x)[0]
    wt = w.transpose(-1, -2)
    return lambda x: torch.matmul(x, wt)


@register(EMBED, domain=DOMAIN)
def packed_embed(ctx: OpContext, inputs: list) -> list:
    """Rows ``ids`` of a weight bound as the file holds it (or a plain float tensor)."""
    w, ids = inputs
    return [embed(w, ids) if isinstance(w, PackedWeight) else w[ids]]


@register("LinearAttention", domain="com.microsoft")
def linear_attention(ctx: OpContext, inputs: list) -> list:
    """onnxruntime's LinearAttention (update_rule "gated_delta"; query heads == kv heads, or
    fewer query heads each serving kv_heads/q_heads consecutive kv heads) through the fused
    kernel: [B, T, H*D] packing, state [B, H_kv, d_k, d_v], decay in log space."""
    query, key, value, past_state, decay, beta = (inputs + [None] * 6)[:6]
    rule = ctx.attr("update_rule", "gated_delta")
    heads, kv_heads = int(ctx.attr("q_num_heads")), int(ctx.attr("kv_num_heads"))
    if rule != "gated_delta" or kv_heads % heads or decay is None or beta is None:
        raise UnsupportedOpError(
            f"com.microsoft::LinearAttention with update_rule={rule!r}, q_num_heads={heads}, "
            f"kv_num_heads={kv_heads} is not supported by the gdnc runtime (gated_delta with "
            "kv_num_heads a multiple of q_num_heads is)")
    B, T, _ = query.shape
    q = query.reshape(B, T, heads, -1)
    k = key.reshape(B, T, -1, q.shape[-1])
    if k.shape[2] != heads:  # key at kv heads: repeat the query heads to match
        q = q.repeat_interleave(kv_heads // heads, dim=2)
    v = value.reshape(B, T, kv_heads, -1)
    g = decay if decay.shape[-1] == kv_heads else decay.reshape(B, T, kv_heads, -1)
    if beta.shape[-1] == 1:
        beta = beta.expand(B, T, kv_heads)
    scale = float(ctx.attr("scale", 0.0)) or None
    fused_inputs = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state": past_state}
    o, state = run_fused_node(by_position(fused_inputs, INPUTS, None), GdnAttrs(scale=scale), 2)
    return [o.reshape(B, T, -1), state]
