"""GatedDeltaNet lowering: argument checks and the fp64 reference (kernels come later)."""

from __future__ import annotations

from gdnc.lowering.gated_delta_net.checks import GdnShapes, validate
from gdnc.lowering.gated_delta_net.reference import gated_delta_net_reference

__all__ = ["GdnShapes", "gated_delta_net_reference", "validate"]
