"""GatedDeltaNet lowering: the public op API (``api``), argument checks, the fp64 reference, the
backend registry and the CPU and Triton kernels (modules)."""

from __future__ import annotations

from gdnc.lowering.gated_delta_net.api import gated_delta_net, gated_delta_net_functional, run_fused_node
from gdnc.lowering.gated_delta_net.checks import GdnShapes, validate
from gdnc.lowering.gated_delta_net.reference import gated_delta_net_reference

__all__ = ["GdnShapes", "gated_delta_net", "gated_delta_net_functional", "gated_delta_net_reference",
           "run_fused_node", "validate"]
