"""Matching and fusing the unfused per-token gated delta rule."""

from __future__ import annotations

from gdnc.passes.delta_net.absorb import AbsorbHeadRepeat, AbsorbL2Norm, AbsorbQScale
from gdnc.passes.delta_net.chains import Chain, find_chains
from gdnc.passes.delta_net.fuse import UNFUSED_RULES, ChainInfo, FusionResult, fuse_delta_nets
from gdnc.passes.delta_net.steps import Step, match_step


def ABSORB_RULES(opset: int) -> list:  # noqa: N802 - reads as the rule list it returns
    """The rules folding q scale, q/k l2-norm and head repeats into fused nodes."""
    return [AbsorbQScale(), AbsorbL2Norm(), AbsorbHeadRepeat(opset=opset)]


__all__ = [
    "ABSORB_RULES", "UNFUSED_RULES", "AbsorbHeadRepeat", "AbsorbL2Norm", "AbsorbQScale", "Chain",
    "ChainInfo", "FusionResult", "Step", "find_chains",
    "fuse_delta_nets", "match_step",
]
