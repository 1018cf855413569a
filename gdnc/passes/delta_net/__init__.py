"""Matching and fusing the unfused per-token gated delta rule."""

from __future__ import annotations

from gdnc.passes.delta_net.absorb import AbsorbQScale
from gdnc.passes.delta_net.chains import Chain, find_chains
from gdnc.passes.delta_net.fuse import ChainInfo, FusionResult, fuse_delta_nets
from gdnc.passes.delta_net.steps import Step, match_step

__all__ = [
    "AbsorbQScale", "Chain", "ChainInfo", "FusionResult", "Step", "find_chains",
    "fuse_delta_nets", "match_step",
]
