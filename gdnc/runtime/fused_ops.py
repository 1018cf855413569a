"""Registers the fused ``ai.gdnc::GatedDeltaNet`` op with the runtime."""

from __future__ import annotations

from gdnc import fused_op
from gdnc.fused_op import GdnAttrs
from gdnc.ops import run_fused_node
from gdnc.runtime.registry import OpContext, register


@register(fused_op.OP_TYPE, domain=fused_op.DOMAIN)
def gated_delta_net(ctx: OpContext, inputs: list) -> list:
    """The fused node, through the best available kernel (see ``gdnc.ops``)."""
    return run_fused_node(inputs, GdnAttrs.from_onnx(dict(ctx.attrs)), ctx.num_outputs)
