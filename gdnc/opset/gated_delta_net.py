"""Contract of the fused ``ai.gdnc::GatedDeltaNet`` graph node (SPEC §2).

Inputs (positional; an optional one may be the empty name ""):

====  ================  ===============================================================
idx   name              shape (batch layout / packed layout)
====  ================  ===============================================================
0     q                 [B, T, H, K]      / [T_total, H, K]
1     k                 same as q
2     v                 [B, T, HV, V]     / [T_total, HV, V]
3     g                 log-decay: [B, T, HV] (GDA) or [B, T, HV, K] (KDA) / packed alike
4     beta              [B, T, HV]        / [T_total, HV]
5     state             optional. Without indices: initial states [N, HV, K, V] ("kv") or
                        [N, HV, V, K] ("vk"); absent = zeros. With indices: a pool [P, ...].
6     cu_seqlens        optional int64 [N+1], packed layout only; absent = one sequence
                        (packed) or N = B sequences of length T (batch).
7     state_in_index    optional int64 [N]: pool slot of each sequence's initial state
                        (negative = zeros). Needs ``state``.
8     state_out_index   optional int64 [N]: slot receiving the final state (negative = not
                        written); default state_in_index.
====  ================  ===============================================================

Outputs: 0 ``o`` (shape and dtype of v); 1 ``final_state`` (optional): [N, HV, K, V] (or vk)
without indices, else the updated pool [P, ...] (functional copy); 2 ``token_states``
(optional): [T_total, HV, K, V] (or vk), the state after every token.

Attributes: ``scale`` (float, default K**-0.5), ``qk_l2norm`` (int 0/1, l2-normalise q and k
with eps 1e-6 inside the sqrt), ``head_map`` ("interleave": value head hv reads key head
hv // (HV/H); "tile": hv % H), ``state_layout`` ("kv" or "vk").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DOMAIN = "ai.gdnc"
OP_TYPE = "GatedDeltaNet"
OPSET_VERSION = 1

INPUTS = (
    "q", "k", "v", "g", "beta", "state", "cu_seqlens", "state_in_index", "state_out_index",
)
OUTPUTS = ("o", "final_state", "token_states")
HEAD_MAPS = ("interleave", "tile")
STATE_LAYOUTS = ("kv", "vk")


@dataclass(frozen=True)
class GdnAttrs:
    """Attributes of one fused node; ``scale=None`` means K**-0.5."""

    scale: float | None = None
    qk_l2norm: bool = False
    head_map: str = "interleave"
    state_layout: str = "kv"

    def to_onnx(self) -> dict[str, Any]:
        """Attribute dict for an ONNX/IR node (every attribute written explicitly)."""
        out: dict[str, Any] = {
            "qk_l2norm": int(self.qk_l2norm),
            "head_map": self.head_map,
            "state_layout": self.state_layout,
        }
        if self.scale is not None:
            out["scale"] = float(self.scale)
        return out

    @classmethod
    def from_onnx(cls, attrs: dict[str, Any]) -> GdnAttrs:
        scale = attrs.get("scale")
        return cls(
            scale=None if scale is None else float(scale),
            qk_l2norm=bool(attrs.get("qk_l2norm", 0)),
            head_map=str(attrs.get("head_map", "interleave")),
            state_layout=str(attrs.get("state_layout", "kv")),
        )
