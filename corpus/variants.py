"""Torch modules that spell the per-token gated delta rule in different ways.

Every module mirrors the loop of HF ``torch_recurrent_gated_delta_rule``
(``transformers.models.qwen3_next.modeling_qwen3_next``): inputs in the batch layout
``q, k [B, T, H, K]``, ``v [B, T, HV, V]``, ``g [B, T, HV]`` (log decay), ``beta [B, T, HV]``
and an optional ``initial_state``; grouped value heads are expanded with
``repeat_interleave`` (the HF "interleave" head map); heads are moved to dim 1, q is
scaled by ``K**-0.5``, then the loop runs over tokens. Outputs: ``o [B, T, HV, V]`` and the
final state.

Only the spelling of the per-token step differs between the modules, which is the point:
the fusion pass must recognise all fusable ones and none of the near-misses; which is which
(and the miss a near-miss must report) is the module's record in :mod:`corpus.spellings`.
:class:`HFDeltaNet` wraps the HF function itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .hf_source import hf_function


def hf_loop():
    """The HF reference loop, undecorated (the hub-kernel wrapper would pick fla if present)."""
    from transformers.models.qwen3_next import modeling_qwen3_next as m

    return hf_function(m, "torch_recurrent_gated_delta_rule")


class HFDeltaNet(nn.Module):
    """``torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state, True, l2norm)``."""

    # input/state conventions, as on the variants' ``_DeltaBase``
    state_layout = "kv"
    kda = False
    gate_is_decay = False

    def __init__(self, l2norm: bool) -> None:
        super().__init__()
        self.l2norm = l2norm
        self.fn = hf_loop()

    def forward(self, q, k, v, g, beta, initial_state=None):
        return self.fn(
            q,
            k,
            v,
            g,
            beta,
            initial_state,
            output_final_state=True,
            use_qk_l2norm_in_kernel=self.l2norm,
        )


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:  # transformers' default eps
    # same spelling as transformers' l2norm
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


class _DeltaBase(nn.Module):
    """Shared prelude, token loop and epilogue. Subclasses override the spelling hooks
    (``recall``, ``outer``, ``readout``) or, for extra outputs, ``loop``."""

    state_layout = "kv"  # "kv": [B, HV, K, V]; "vk": [B, HV, V, K]
    kda = False  # per-key gate g [B, T, HV, K]
    gate_is_decay = False  # the gate input is a = exp(g) (no Exp in the graph)
    scale_by_mul = False  # q * K**-0.5 instead of q / K**0.5

    def __init__(self, l2norm: bool = False) -> None:
        super().__init__()
        self.l2norm = l2norm

    def forward(self, q, k, v, g, beta, initial_state=None):
        B, T, H, K = k.shape
        HV, V = v.shape[-2:]
        if H != HV:
            q = q.repeat_interleave(HV // H, dim=2)
            k = k.repeat_interleave(HV // H, dim=2)
        q, k, v, beta, g = [
            x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
            for x in (q, k, v, beta, g)
        ]
        if self.l2norm:
            q = _l2norm(q)
            k = _l2norm(k)
        if self.scale_by_mul:
            q = q * (K**-0.5)
        else:
            q = q / (K**0.5)
        shape = (B, HV, K, V) if self.state_layout == "kv" else (B, HV, V, K)
        if initial_state is None:
            S = torch.zeros(shape, dtype=v.dtype, device=v.device)
        else:
            S = initial_state.to(v)
        out = torch.zeros_like(v)
        return self.loop(q, k, v, g, beta, S, out, T)

    def decay(self, S, g, i):
        if self.kda:  # g: [B, HV, T, K]
            a = g[:, :, i].exp()
            return S * (a.unsqueeze(-1) if self.state_layout == "kv" else a.unsqueeze(-2))
        a = g[:, :, i] if self.gate_is_decay else g[:, :, i].exp()
        return S * a[..., None, None]

    def loop(self, q, k, v, g, beta, S, out, T):
        for i in range(T):
            S = self.step(q, k, v, g, beta, S, out, i)
        return out.transpose(1, 2).contiguous(), S

    def step(self, q, k, v, g, beta, S, out, i):
        """Token ``i``: decay, delta update, write ``out[:, :, i]``; returns the new state.

        The three contractions are the spelling hooks :meth:`recall`, :meth:`outer` and
        :meth:`readout`.
        """
        q_t, k_t, v_t = q[:, :, i], k[:, :, i], v[:, :, i]
        S = self.decay(S, g, i)
        beta_t = beta[:, :, i].unsqueeze(-1)
        kv_mem = self.recall(S, k_t)
        delta = (v_t - kv_mem) * beta_t
        S = S + self.outer(k_t, delta)
        out[:, :, i] = self.readout(S, q_t)
        return S

    # the HF spelling (Mul + ReduceSum, kv)
    def recall(self, S, k_t):  # S^T k_t
        return (S * k_t.unsqueeze(-1)).sum(dim=-2)

    def outer(self, k_t, delta):  # k_t delta^T
        return k_t.unsqueeze(-1) * delta.unsqueeze(-2)

    def readout(self, S, q_t):  # S^T q_t
        return (S * q_t.unsqueeze(-1)).sum(dim=-2)


class HFLoop(_DeltaBase):
    """The HF spelling itself (reference for the others)."""


class MatMulLoop(_DeltaBase):
    """(1) contractions spelled with ``torch.matmul``."""

    def recall(self, S, k_t):
        return torch.matmul(k_t.unsqueeze(-2), S).squeeze(-2)

    def outer(self, k_t, delta):
        return torch.matmul(k_t.unsqueeze(-1), delta.unsqueeze(-2))

    def readout(self, S, q_t):
        return torch.matmul(q_t.unsqueeze(-2), S).squeeze(-2)


class EinsumLoop(_DeltaBase):
    """(2) contractions spelled with ``torch.einsum``."""

    def recall(self, S, k_t):
        return torch.einsum("bhk,bhkv->bhv", k_t, S)

    def outer(self, k_t, delta):
        return torch.einsum("bhk,bhv->bhkv", k_t, delta)

    def readout(self, S, q_t):
        return torch.einsum("bhk,bhkv->bhv", q_t, S)


class TransposedStateLoop(_DeltaBase):
    """(3) state kept value-major ``[B, HV, V, K]``; initial and final state in that layout."""

    state_layout = "vk"

    def recall(self, S, k_t):
        return (S * k_t.unsqueeze(-2)).sum(dim=-1)

    def outer(self, k_t, delta):
        return delta.unsqueeze(-1) * k_t.unsqueeze(-2)

    def readout(self, S, q_t):
        return (S * q_t.unsqueeze(-2)).sum(dim=-1)


class DirectDecayLoop(_DeltaBase):
    """(4) the gate input is the decay ``a = exp(g)`` itself: no Exp in the graph."""

    gate_is_decay = True


class KDALoop(_DeltaBase):
    """(5) KDA: per-key gate ``g [B, T, HV, K]``, ``S * exp(g_t).unsqueeze(-1)``."""

    kda = True


class MulScaleLoop(_DeltaBase):
    """(6) q scale applied as ``Mul`` by the constant ``K**-0.5`` instead of ``Div``."""

    scale_by_mul = True


class NearMissStateSum(_DeltaBase):
    """(7a) NOT fusable: every step's output also reads ``S.sum()`` (state consumed twice)."""

    def readout(self, S, q_t):
        o_t = super().readout(S, q_t)
        return o_t + 0.01 * S.sum(dim=(-2, -1)).unsqueeze(-1)


class NearMissStateOutput(_DeltaBase):
    """(7b) NOT fusable as a plain chain: the state after step 1 is also a graph output."""

    def loop(self, q, k, v, g, beta, S, out, T):
        S1 = None
        for i in range(T):
            S = self.step(q, k, v, g, beta, S, out, i)
            if i == 0:
                S1 = S * 1.0  # a distinct tensor (an identity alias would be folded)
        return out.transpose(1, 2).contiguous(), S, S1


class NearMissWrongAxis(_DeltaBase):
    """(8) NOT fusable: ``u`` contracts the state over the value axis (sum(-1) in kv layout).

    Needs K == V to run.
    """

    def recall(self, S, k_t):
        return (S * k_t.unsqueeze(-2)).sum(dim=-1)  # wrong: contracts V, not K

