"""Every backend x algorithm against the fp64 reference (llama.cpp test-backend-ops style).

Cases are drawn by hypothesis: head and state sizes, GVA ratios, head maps, state layouts,
GDA/KDA gates, up to 8 packed sequences of random lengths (0 and 1 included), pools with
unused slots, negative and distinct in/out slots, fp32/bf16 inputs and states. Outputs and
token states are poisoned with NaN before the kernel runs; the whole pool (unused slots too)
is compared. Triton runs on a GPU, or on the CPU under TRITON_INTERPRET=1 at small shapes.

Isolation: NaN or Inf in one sequence's q/k/v/g/beta rows and its initial pool slot leaves
every other sequence's o rows, token states and out slot bit-identical to a clean run, and
slots nobody writes unchanged, for every backend x algorithm, with lengths around the chunk
sizes (a chunk that ends inside a sequence is padded).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdnc.lowering.gated_delta_net.api import gated_delta_net
from gdnc.lowering.gated_delta_net.cpu import KDA_CHUNK  # the shortest chunk

HAS_TRITON = importlib.util.find_spec("triton") is not None
GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

LENGTHS = (0, 1, 1, 2, 5, 17, 64, 70, 130)
# Triton's interpreter runs a kernel ~1000x slower: shorter sequences, still across its
# 64-token chunks, and fewer of them per case
INTERPRETED = {"lengths": (0, 1, 2, 5, 17, 64, 70), "max_seqs": 3}

# (backend, algorithm, device, max head dim, examples, case options)
TARGETS = [("cpu", "recurrent", "cpu", 128, 40, {}), ("cpu", "chunked", "cpu", 128, 40, {}),
           ("native", "recurrent", "cpu", 128, 60, {})]
if HAS_TRITON and GPU:
    TARGETS += [("triton", a, "cuda", 128, 60, {}) for a in ("recurrent", "chunked")]
elif HAS_TRITON and INTERPRET:
    TARGETS += [("triton", "recurrent", "cpu", 32, 12, INTERPRETED),
                ("triton", "chunked", "cpu", 32, 8, INTERPRETED)]

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
def cases(draw, max_dim: int, lengths: tuple[int, ...] = LENGTHS, min_seqs: int = 1, max_seqs: int = 8,
          ) -> Case:
    """A case of ``min_seqs..max_seqs`` sequences with lengths drawn from ``lengths``."""
    dims = [d for d in (16, 32, 48, 64, 128) if d <= max_dim]
    n = draw(st.integers(min_seqs, max_seqs))
    drawn = tuple(draw(st.lists(st.sampled_from(lengths), min_size=n, max_size=n)))
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
        K=draw(st.sampled_from(dims)), V=draw(st.sampled_from(dims)), lengths=drawn,
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


class Run(NamedTuple):
    """What one call wrote: o, the pool, token states (None when not asked)."""

    o: torch.Tensor
    pool: torch.Tensor
    ts: torch.Tensor | None


def _run(c: Case, tensors: list[torch.Tensor], pool: torch.Tensor, cu: torch.Tensor,
         backend: str, algorithm: str) -> Run:
    """One call on a copy of ``pool``; o and token states start as NaN (unwritten shows)."""
    q, k, v, g, beta = tensors
    device = q.device
    state_dims = pool.shape[2:]
    pool = pool.clone()
    ts = torch.full((q.shape[0], v.shape[1], *state_dims), float("nan"), dtype=pool.dtype,
                    device=device) if c.token_states else None
    o = torch.full_like(v, float("nan"))
    gated_delta_net(q, k, v, g, beta, pool, cu,
                    torch.tensor(c.in_slots, dtype=torch.int64, device=device),
                    torch.tensor(c.out_slots, dtype=torch.int64, device=device),
                    scale=0.7 if c.seed % 2 else None, qk_l2norm=c.l2norm, head_map=c.head_map,
                    state_layout=c.layout, token_states=ts, backend=backend,
                    algorithm=algorithm, out=o)
    return Run(o, pool, ts)


def _check(c: Case, backend: str, algorithm: str, device: str) -> None:
    tensors, pool, cu, _ = _inputs(c, device)
    ref = _run(c, tensors, pool, cu, "reference", "auto")
    got = _run(c, tensors, pool, cu, backend, algorithm)
    low = c.bf16_inputs or c.bf16_state
    tol = TOLERANCE[("bf16",)] if low else TOLERANCE[(algorithm, "fp32")]
    if device == "cuda" and algorithm == "chunked" and not low:
        tol = GPU_CHUNKED_FP32
    assert _rel(got.o, ref.o) <= tol, f"o differs: {c.id}"
    assert _rel(got.pool, ref.pool) <= tol, f"pool differs: {c.id}"
    untouched = [s for s in range(pool.shape[0]) if s not in c.out_slots]
    assert torch.equal(got.pool[untouched], pool[untouched]), "a slot nobody writes changed"
    if got.ts is not None and ref.ts is not None:
        assert _rel(got.ts, ref.ts) <= tol, f"token states differ: {c.id}"


@pytest.mark.parametrize(("backend", "algorithm", "device", "max_dim", "examples", "options"), TARGETS,
                         ids=[f"{b}-{a}" for b, a, *_ in TARGETS])
def test_backend_matches_reference(backend, algorithm, device, max_dim, examples, options) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases(max_dim, **options))
    def run(case: Case) -> None:
        _check(case, backend, algorithm, device)

    run()


# Poisoning: (backend, algorithm, device, max head dim, max sequences, examples) for every
# backend x algorithm. Lengths straddle the chunks (CPU 32, KDA 16, Triton 64) and the
# chunked thresholds of "auto" (the backends' chunked_min_tokens), so that chunks end inside sequences.
POISON_LENGTHS = (0, 1, 5, 17, 20, 23, 31, 33, 45, 64, 70)
POISON_TARGETS = [("reference", "auto", "cpu", 32, 4, 5), ("auto", "auto", "cpu", 32, 4, 10)]
POISON_TARGETS += [("cpu", a, "cpu", 32, 4, 15) for a in ("recurrent", "chunked", "auto")]
POISON_TARGETS += [("native", a, "cpu", 32, 4, 15) for a in ("recurrent", "auto")]
if HAS_TRITON and (GPU or INTERPRET):
    POISON_TARGETS += [("triton", a, "cuda" if GPU else "cpu", 64 if GPU else 16, 4 if GPU else 3,
                        30 if GPU else 3) for a in ("recurrent", "chunked", "auto")]
POISONABLE = ("q", "k", "v", "g", "beta", "state")


@dataclass(frozen=True)
class Poison:
    """Non-finite ``value`` in ``inputs`` of sequence ``seq``: its token rows (all, or only
    ``row``) of q, k, v, g, beta and its in slot of the pool."""

    seq: int
    inputs: frozenset[str]
    value: float
    row: int | None


@st.composite
def poisonings(draw, max_dim: int, max_seqs: int) -> tuple[Case, Poison]:
    """A case and a poisoned sequence in it: when there is one, a sequence whose packed
    predecessor ends inside a chunk (its padding would be this sequence's tokens)."""
    c = draw(cases(max_dim, POISON_LENGTHS, min_seqs=2, max_seqs=max_seqs))
    after_padding = [n for n in range(1, len(c.lengths)) if c.lengths[n - 1] % KDA_CHUNK]
    seq = draw(st.sampled_from(after_padding or range(len(c.lengths))))
    inputs = st.just(frozenset(POISONABLE)) | st.frozensets(st.sampled_from(POISONABLE), min_size=1)
    rows = st.none() | st.integers(0, c.lengths[seq] - 1) if c.lengths[seq] else st.none()
    return c, Poison(seq, draw(inputs), draw(st.sampled_from([math.nan, math.inf, -math.inf])),
                     draw(rows))


def _check_isolation(c: Case, p: Poison, backend: str, algorithm: str, device: str) -> None:
    """The other sequences' o rows, token states and out slots are bit-identical to a run
    without the poison; slots nobody writes keep their values."""
    tensors, pool, cu, _ = _inputs(c, device)
    clean = _run(c, tensors, pool, cu, backend, algorithm)
    first, end = int(cu[p.seq]), int(cu[p.seq + 1])
    rows = slice(first, end) if p.row is None else slice(first + p.row, first + p.row + 1)
    tensors = [x.clone() for x in tensors]
    for name, x in zip(POISONABLE, tensors):
        if name in p.inputs:
            x[rows] = p.value
    pool = pool.clone()
    if "state" in p.inputs and c.in_slots[p.seq] >= 0:
        pool[c.in_slots[p.seq]] = p.value
    dirty = _run(c, tensors, pool, cu, backend, algorithm)
    where = f"{c.id}, seed {c.seed}, lengths {c.lengths}, {p}"
    tok = torch.cat([torch.arange(int(cu[n]), int(cu[n + 1])) for n in range(len(c.lengths))
                     if n != p.seq]).to(device)
    assert torch.isfinite(clean.o[tok]).all(), f"the clean run is not finite: {where}"
    assert _same_bits(dirty.o[tok], clean.o[tok]), f"another sequence's o changed: {where}"
    if clean.ts is not None and dirty.ts is not None:
        assert _same_bits(dirty.ts[tok], clean.ts[tok]), f"another's token states: {where}"
    others = [s for n, s in enumerate(c.out_slots) if n != p.seq and s >= 0]
    assert _same_bits(dirty.pool[others], clean.pool[others]), f"another's out slot: {where}"
    untouched = [s for s in range(pool.shape[0]) if s not in c.out_slots]
    assert _same_bits(dirty.pool[untouched], pool[untouched]), f"a slot nobody writes: {where}"


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (a NaN equals the same NaN)."""
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
    return torch.equal(a.contiguous().view(ints[a.dtype]), b.contiguous().view(ints[b.dtype]))


@pytest.mark.parametrize(("backend", "algorithm", "device", "max_dim", "max_seqs", "examples"),
                         POISON_TARGETS, ids=[f"{b}-{a}" for b, a, *_ in POISON_TARGETS])
def test_non_finite_inputs_stay_in_their_sequence(backend, algorithm, device, max_dim, max_seqs,
                                                  examples) -> None:
    """NaN/Inf in one sequence's inputs or initial state reaches no other sequence (drawn
    fresh each run)."""
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=poisonings(max_dim, max_seqs))
    def run(case: tuple[Case, Poison]) -> None:
        _check_isolation(*case, backend, algorithm, device)

    run()


def test_targets_exist() -> None:
    """A run that checks no backend is a failure, not a pass."""
    assert {b for b, *_ in TARGETS} >= {"cpu"}
