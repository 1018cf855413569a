"""Inputs of one op-level point: B sequences of T tokens at one GdnShape, on one device.

q, k [B*T, HV, K], v [B*T, HV, V], g, beta [B*T, HV], packed by sequence (so ``x.view(B, T,
...)`` is the batch layout); q is pre-scaled by K^-1/2 and k l2-normalised, as the unfused
graph hands them to its per-token chain (the op then runs with scale 1, no l2-norm). ``pools``:
``copies`` independent fp32 state pools [B, HV, K, V] ("kv"), call i working on pool
i % copies, so that decode reads states that are not in the cache, as a model's layers do."""

from __future__ import annotations

import math

import torch

from gdnc.bench.options import GdnShape

MAX_COPIES = 64
ROTATION_OVERFLOW = 3  # a pass over the rotated pools overflows the cache this many times


def rotation_copies(shape: GdnShape, batch: int, cache_bytes: int) -> int:
    """Pools to rotate over so that a pass over them overflows the cache ``ROTATION_OVERFLOW``
    times (2 to ``MAX_COPIES``: small states fall short of it)."""
    want = ROTATION_OVERFLOW * cache_bytes / (batch * shape.state_bytes)
    return max(2, min(MAX_COPIES, math.ceil(want)))


def op_bytes(shape: GdnShape, batch: int, tokens: int, copies: int) -> dict[str, int]:
    """fp32 bytes one point needs: the pools and the token tensors ``OpInputs`` allocates, and
    room for what a competitor makes while it runs (the unfused chain's per-token states, the
    peers' copies of a pool: taken as four more states per sequence)."""
    n, state = batch * tokens, batch * shape.state_bytes
    return {"state pools": copies * state,
            "token tensors": 4 * n * shape.HV * (2 * shape.K + 2 * shape.V + 2),
            "competitors' temporaries": 4 * state}


class OpInputs:
    def __init__(self, shape: GdnShape, batch: int, tokens: int, copies: int, device: torch.device,
                 seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        n, HV, K, V = batch * tokens, shape.HV, shape.K, shape.V

        def rand(*size: int) -> torch.Tensor:
            return torch.rand(*size, generator=gen).to(device)

        def randn(*size: int) -> torch.Tensor:
            return torch.randn(*size, generator=gen).to(device)

        self.shape, self.batch, self.tokens, self.device = shape, batch, tokens, device
        self.q = randn(n, HV, K) * K**-0.5
        self.k = torch.nn.functional.normalize(randn(n, HV, K), dim=-1)
        self.v = randn(n, HV, V)
        self.g = -0.1 * rand(n, HV)  # log decay
        self.beta = rand(n, HV)
        self.pools = [0.1 * randn(batch, HV, K, V) for _ in range(copies)]
        self.cu_seqlens = torch.arange(batch + 1, dtype=torch.int64) * tokens  # host: no read-back
        self.o = torch.empty(n, HV, V, device=device)

    @property
    def copies(self) -> int:
        return len(self.pools)

    @property
    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q, self.k, self.v, self.g, self.beta

    def batched(self) -> tuple[torch.Tensor, ...]:
        """q, k, v, g, beta in the batch layout [B, T, ...] (views)."""
        return tuple(x.view(self.batch, self.tokens, *x.shape[1:]) for x in self.packed)
