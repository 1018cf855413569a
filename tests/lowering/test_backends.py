"""Every backend x algorithm against the fp64 reference (llama.cpp test-backend-ops style).

Cases are drawn by hypothesis: head and state sizes, GVA ratios, head maps, state layouts,
GDA/KDA gates, up to 8 packed sequences of random lengths (0 and 1 included), pools with
unused slots, negative and distinct in/out slots, fp32/bf16 inputs and states. Outputs and
token states are poisoned with NaN before the kernel runs; the whole pool (unused slots too)
is compared. Triton runs on a GPU, or on the CPU under TRITON_INTERPRET=1 at small shapes.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdnc.ops import gated_delta_net

HAS_TRITON = importlib.util.find_spec("triton") is not None
GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (backend, algorithm, device, max head dim, examples)
TARGETS = [("cpu", "recurrent", "cpu", 128, 40), ("cpu", "chunked", "cpu", 128, 40)]
if HAS_TRITON and GPU:
    TARGETS += [("triton", "recurrent", "cuda", 128, 60), ("triton", "chunked", "cuda", 128, 60)]
elif HAS_TRITON and INTERPRET:
    TARGETS += [("triton", "recurrent", "cpu", 32, 12), ("triton", "chunked", "cpu", 32, 8)]

# relative L2 error vs the fp64 reference (SPEC §6); GPU chunked uses tf32 dots
TOLERANCE = {("recurrent", "fp32"): 1e-5, ("chunked", "fp32"): 1e-4, ("bf16",): 1e-2}
GPU_CHUNKED_FP32 = 2e-3


@dataclass(frozen=True)
class Case:
    H: int
    group: int
    K: int
    V: int
    lengths: tuple[int, ...]
    spare_slots: int
    in_slots: tuple[int, ...]
    out_slots: tuple[int, ...]
    head_map: str
    layout: str
    kda: bool
    l2norm: bool
    bf16_inputs: bool
    bf16_state: bool
    token_states: bool
    seed: int

    @property
    def id(self) -> str:
        return (f"N{len(self.lengths)}-K{self.K}-V{self.V}-H{self.H}x{self.group}-{self.head_map}-"
                f"{self.layout}-{'kda' if self.kda else 'gda'}{'-bf16' if self.bf16_inputs else ''}")


@st.composite
def cases(draw, max_dim: int) -> Case:
    dims = [d for d in (16, 32, 48, 64, 128) if d <= max_dim]
    n = draw(st.integers(1, 8))
    lengths = tuple(draw(st.lists(st.sampled_from([0, 1, 1, 2, 5, 17, 64, 70, 130]),
                                  min_size=n, max_size=n)))
    spare = draw(st.integers(0, 3))
    pool = n + spare
    def some_negative(slots):  # about one slot in six becomes -1 (zeros in / no write)
        return tuple(s if draw(st.integers(0, 5)) else -1 for s in slots[:n])

    slots = draw(st.permutations(range(pool)))
    ins = some_negative(slots)
    outs = draw(st.sampled_from(["same", "other", "swap"]))
    if outs == "same":
        out_slots = ins
    elif outs == "swap":  # read-before-write across sequences
        out_slots = tuple(reversed(slots[:n]))
    else:
        out_slots = some_negative(draw(st.permutations(range(pool))))
    return Case(
        H=draw(st.sampled_from([1, 2])), group=draw(st.sampled_from([1, 2, 4])),
        K=draw(st.sampled_from(dims)), V=draw(st.sampled_from(dims)), lengths=lengths,
        spare_slots=spare, in_slots=ins, out_slots=out_slots,
        head_map=draw(st.sampled_from(["interleave", "tile"])),
        layout=draw(st.sampled_from(["kv", "vk"])), kda=draw(st.booleans()),
        l2norm=draw(st.booleans()), bf16_inputs=draw(st.integers(0, 4)) == 0,
        bf16_state=draw(st.integers(0, 4)) == 0, token_states=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _inputs(c: Case, device: str):
    gen = torch.Generator().manual_seed(c.seed)
    T, HV = sum(c.lengths), c.H * c.group

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32)

    q, k = randn(T, c.H, c.K), randn(T, c.H, c.K)
    if not c.l2norm:  # keep the recurrence bounded: unit-ish keys
        k = k / c.K**0.5
    v = randn(T, HV, c.V)
    g = -torch.nn.functional.softplus(randn(T, HV, c.K) if c.kda else randn(T, HV)) * 0.5
    beta = torch.sigmoid(randn(T, HV))
    state_dims = (c.K, c.V) if c.layout == "kv" else (c.V, c.K)
    pool = randn(len(c.lengths) + c.spare_slots, HV, *state_dims)
    dtype = torch.bfloat16 if c.bf16_inputs else torch.float32
    tensors = [x.to(dtype) for x in (q, k, v)] + [g, beta]
    pool = pool.to(torch.bfloat16 if c.bf16_state else torch.float32)
    cu = torch.tensor([0, *torch.tensor(c.lengths).cumsum(0).tolist()], dtype=torch.int64)
    return [x.to(device) for x in tensors], pool.to(device), cu.to(device), state_dims


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got64, want64 = got.double().cpu(), want.double().cpu()
    if got64.numel() == 0:
        return 0.0
    assert not torch.isnan(got64).any(), "NaN in output (an element was not written?)"
    denom = want64.norm().item()
    return (got64 - want64).norm().item() / denom if denom else (got64 - want64).abs().max().item()


def _check(c: Case, backend: str, algorithm: str, device: str) -> None:
    (q, k, v, g, beta), pool, cu, state_dims = _inputs(c, device)
    T, HV = q.shape[0], v.shape[1]
    kwargs = dict(scale=0.7 if c.seed % 2 else None, qk_l2norm=c.l2norm, head_map=c.head_map,
                  state_layout=c.layout)
    ins = torch.tensor(c.in_slots, dtype=torch.int64, device=device)
    outs = torch.tensor(c.out_slots, dtype=torch.int64, device=device)
    ref_pool = pool.clone()
    ref_ts = torch.full((T, HV, *state_dims), float("nan"), dtype=pool.dtype, device=device) \
        if c.token_states else None
    ref_o = gated_delta_net(q, k, v, g, beta, ref_pool, cu, ins, outs, token_states=ref_ts,
                            backend="reference", **kwargs)
    got_pool = pool.clone()
    got_ts = torch.full_like(ref_ts, float("nan")) if ref_ts is not None else None
    got_o = torch.full_like(ref_o, float("nan"))
    gated_delta_net(q, k, v, g, beta, got_pool, cu, ins, outs, token_states=got_ts,
                    backend=backend, algorithm=algorithm, out=got_o, **kwargs)
    low = c.bf16_inputs or c.bf16_state
    tol = TOLERANCE[("bf16",)] if low else TOLERANCE[(algorithm, "fp32")]
    if device == "cuda" and algorithm == "chunked" and not low:
        tol = GPU_CHUNKED_FP32
    assert _rel(got_o, ref_o) <= tol, f"o differs: {c.id}"
    assert _rel(got_pool, ref_pool) <= tol, f"pool differs: {c.id}"
    untouched = [s for s in range(pool.shape[0]) if s not in c.out_slots]
    assert torch.equal(got_pool[untouched], pool[untouched]), "a slot nobody writes changed"
    if got_ts is not None:
        assert _rel(got_ts, ref_ts) <= tol, f"token states differ: {c.id}"


@pytest.mark.parametrize(("backend", "algorithm", "device", "max_dim", "examples"), TARGETS,
                         ids=[f"{b}-{a}" for b, a, *_ in TARGETS])
def test_backend_matches_reference(backend, algorithm, device, max_dim, examples) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases(max_dim))
    def run(case: Case) -> None:
        _check(case, backend, algorithm, device)

    run()


def test_targets_exist() -> None:
    """A run that checks no backend is a failure, not a pass."""
    assert {b for b, *_ in TARGETS} >= {"cpu"}
