"""What every GatedDeltaNet kernel receives: one validated, resolved launch.

``gdnc.gated_delta_net`` validates the call once, resolves the defaults and splits it
into launches; a kernel is ``run(launch: GdnLaunch) -> None``. It computes its sequences
(``starts``/``lengths``: tokens ``starts[n] : starts[n] + lengths[n]`` of the packed inputs),
writes their rows of ``o`` and, when given, of ``token_states``, reads initial states from
``state_src[in_index[n]]`` (negative: zeros) and writes final states into
``state_dst[out_index[n]]`` (negative: nothing). ``state_src`` is either ``state_dst`` (no
sequence's out slot is another's in slot) or a snapshot of the in states, so a kernel may
run its sequences in any order or in parallel.

Layouts: q, k [T_total, H, K]; v [T_total, HV, V]; g [T_total, HV] or [T_total, HV, K] (log
decay); beta [T_total, HV]; o [T_total, HV, V] (v's dtype); pools [P, HV, K, V] ("kv") or
[P, HV, V, K] ("vk"), fp32 or bf16; token_states [T_total, HV, K, V] / vk. Index tensors are
int64 on the inputs' device; all offsets must be computed in 64-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdnc.lowering.gated_delta_net.checks import GdnShapes


@dataclass(frozen=True)
class GdnOptions:
    """Resolved attributes: ``scale`` is a number (K**-0.5 already applied as default)."""

    scale: float
    qk_l2norm: bool = False
    head_map: str = "interleave"
    state_layout: str = "kv"


@dataclass(frozen=True)
class GdnLaunch:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    o: torch.Tensor
    state_src: torch.Tensor
    state_dst: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    in_index: torch.Tensor
    out_index: torch.Tensor
    token_states: torch.Tensor | None
    shapes: GdnShapes
    opts: GdnOptions
    max_len: int  # longest sequence of this launch (host int)

    @property
    def num_seqs(self) -> int:
        return int(self.starts.numel())
