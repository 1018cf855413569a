"""GatedDeltaNet lowering: argument checks, the fp64 reference, the CPU and Triton kernels (modules)."""

from __future__ import annotations

from gdnc.lowering.gated_delta_net.checks import GdnShapes, validate
from gdnc.lowering.gated_delta_net.reference import gated_delta_net_reference

__all__ = ["GdnShapes", "gated_delta_net_reference", "validate"]
