"""The fp64 GatedDeltaNet reference, its argument checks, and the public op API."""

from __future__ import annotations

import itertools
import types
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3_next import modeling_qwen3_next

from corpus.hf_source import hf_function
from gdnc.errors import OpArgumentError
from gdnc.lowering.gated_delta_net import gated_delta_net_reference, validate
from gdnc.lowering.gated_delta_net.api import gated_delta_net, gated_delta_net_functional, run_fused_node
from gdnc.opset.gated_delta_net import L2NORM_EPS, GdnAttrs

F64 = torch.float64
PROPS = settings(max_examples=25, deadline=None)


# ----------------------------------------------------------------------------- helpers


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against b (SPEC §6); inf when either holds a NaN."""
    a, b = a.to(F64), b.to(F64)
    if a.isnan().any() or b.isnan().any():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@dataclass(frozen=True)
class Case:
    """One random packed problem: q, k [T, H, K], v [T, HV, V], g [T, HV(, K)], beta [T, HV],
    pool [P, HV, K, V] (fp64, random), cu [N+1]."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    pool: torch.Tensor
    cu: torch.Tensor
    lens: tuple[int, ...]
    l2: bool

    @property
    def N(self) -> int:
        return len(self.lens)

    @property
    def P(self) -> int:
        return self.pool.shape[0]

    def run(self, pool=None, *, token_states=False, **kw):
        """Reference on a copy of the pool; returns (o, pool after, token_states or None)."""
        pool = (self.pool if pool is None else pool).clone()
        ts = None
        if token_states:
            ts = torch.full((self.q.shape[0], *pool.shape[1:]), float("nan"), dtype=pool.dtype)
        o = gated_delta_net_reference(
            self.q, self.k, self.v, self.g, self.beta, pool, self.cu,
            qk_l2norm=self.l2, token_states=ts, **kw,
        )
        return o, pool, ts

    def sequence(self, n: int) -> Case:
        """Sequence n alone (same pool)."""
        a, b = self.cu[n].item(), self.cu[n + 1].item()
        return replace(
            self, q=self.q[a:b], k=self.k[a:b], v=self.v[a:b], g=self.g[a:b],
            beta=self.beta[a:b], cu=torch.tensor([0, b - a]), lens=(b - a,),
        )


def make_case(seed, lens, H, G, K, V, P, *, kda=False, l2=False, dtype=F64) -> Case:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=F64)

    T, HV = sum(lens), H * G
    return Case(
        q=randn(T, H, K).to(dtype),
        k=(randn(T, H, K) * K**-0.5).to(dtype),
        v=randn(T, HV, V).to(dtype),
        g=(-rand(T, HV, K) if kda else -rand(T, HV)).to(dtype),
        beta=rand(T, HV).to(dtype),
        pool=randn(P, HV, K, V),
        cu=torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int64),
        lens=tuple(lens),
        l2=l2,
    )


@st.composite
def cases(draw, *, kda=None, min_len=0, min_seqs=1):
    """Small random problems; the pool has 2N..2N+2 slots so that spare slots exist."""
    lens = draw(st.lists(st.integers(min_len, 4), min_size=min_seqs, max_size=3))
    return make_case(
        draw(st.integers(0, 2**32 - 1)), lens,
        H=draw(st.integers(1, 2)), G=draw(st.integers(1, 3)),
        K=draw(st.integers(1, 4)), V=draw(st.integers(1, 4)),
        P=2 * len(lens) + draw(st.integers(0, 2)),
        kda=draw(st.booleans()) if kda is None else kda, l2=draw(st.booleans()),
    )


def idx(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


class _TorchFp64(types.ModuleType):
    """The torch module, except that ``torch.float32`` is float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def hf_recurrent(fp64: bool):
    """HF's torch_recurrent_gated_delta_rule (hub/fla dispatch unwrapped). It casts every
    input to torch.float32; with ``fp64`` that name is rebound to float64 in its globals."""
    fn = hf_function(modeling_qwen3_next, "torch_recurrent_gated_delta_rule")
    if not fp64:
        return fn
    glb = {**fn.__globals__, "torch": _TorchFp64("torch")}
    return types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)


# ----------------------------------------------------------------------- vs HF transformers

HF_SHAPES = [  # B, T, H, HV, K, V
    (1, 1, 1, 1, 4, 4),
    (2, 7, 2, 2, 8, 6),
    (2, 9, 2, 6, 4, 8),
    (3, 16, 1, 4, 16, 16),
]


def hf_inputs(B, T, H, HV, K, V, seed):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    return (
        randn(B, T, H, K), randn(B, T, H, K) * K**-0.5, randn(B, T, HV, V),
        -torch.rand(B, T, HV, generator=gen, dtype=F64),
        torch.rand(B, T, HV, generator=gen, dtype=F64),
        randn(B, HV, K, V),
    )


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("shape", HF_SHAPES)
def test_matches_hf_transformers_fp64(shape, l2, with_state):
    q, k, v, g, beta, s0 = hf_inputs(*shape, seed=HF_SHAPES.index(shape) * 4 + 2 * l2 + with_state)
    init = s0 if with_state else None
    o_ref, s_ref = hf_recurrent(fp64=True)(q, k, v, g, beta, init, True, l2)
    o, s = gated_delta_net_functional(q, k, v, g, beta, init, qk_l2norm=l2)
    assert o.dtype == s.dtype == F64
    assert rel_err(o, o_ref) < 1e-12
    assert rel_err(s, s_ref) < 1e-12


def test_hf_fp64_shim_is_faithful():
    """Unpatched HF (fp32) agrees to fp32 accuracy, and the patched one is far tighter."""
    q, k, v, g, beta, s0 = hf_inputs(2, 9, 2, 6, 4, 8, seed=7)
    o32, s32 = hf_recurrent(fp64=False)(q, k, v, g, beta, s0, True, True)
    o, s = gated_delta_net_functional(q, k, v, g, beta, s0, qk_l2norm=True)
    assert o32.dtype == F64 and s32.dtype == torch.float32
    assert 1e-12 < rel_err(o32, o) < 1e-5
    assert rel_err(s32, s) < 1e-5


# ---------------------------------------------------------- independent closed-form check


@PROPS
@given(cases(min_seqs=1))
def test_matches_matrix_form(case):
    """S_t = (I - b k kᵀ) diag(a) S_{t-1} + b k vᵀ, o_t = K^-1/2 S_tᵀ q_t (SPEC §2.1), per head."""
    o, pool, _ = case.run()
    T, H, K = case.q.shape
    HV = case.v.shape[1]
    q, k, cu = case.q, case.k, case.cu.tolist()
    if case.l2:
        q = q / (q.pow(2).sum(-1, keepdim=True) + L2NORM_EPS).sqrt()
        k = k / (k.pow(2).sum(-1, keepdim=True) + L2NORM_EPS).sqrt()
    for n in range(case.N):
        for h in range(HV):
            S = case.pool[n, h].clone()
            kh = h // (HV // H)
            for t in range(cu[n], cu[n + 1]):
                a = case.g[t, h].exp() * torch.ones(K, dtype=F64)
                kt, b = k[t, kh][:, None], case.beta[t, h]
                S = (torch.eye(K, dtype=F64) - b * kt @ kt.T) @ torch.diag(a) @ S
                S = S + b * kt @ case.v[t, h][None, :]
                close(o[t, h], K**-0.5 * S.T @ q[t, kh])
            close(pool[n, h], S)


def test_single_token_from_zeros_by_hand():
    q, k, v = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.5, -1.0]]]), torch.tensor([[[3.0]]])
    g, beta = torch.tensor([[-0.3]]), torch.tensor([[0.25]])
    pool = torch.full((1, 1, 2, 1), 7.0)
    o = gated_delta_net_reference(q, k, v, g, beta, pool, idx([0, 1]), idx([-1]), idx([0]))
    # S = beta k vᵀ = [[0.375], [-0.75]]; o = 2^-1/2 (q . S) = 2^-1/2 (0.375 - 1.5)
    assert o.dtype == torch.float32
    torch.testing.assert_close(pool[0, 0, :, 0], torch.tensor([0.375, -0.75]))
    torch.testing.assert_close(o, torch.tensor([[[-1.125 * 2**-0.5]]]))


# ------------------------------------------------------------------- property tests


@PROPS
@given(cases(), st.data())
def test_packed_equals_each_sequence_alone(case, data):
    slots = data.draw(st.permutations(range(case.P)))[: case.N]
    o, pool, _ = case.run(state_in_index=idx(slots))
    for n, slot in enumerate(slots):
        o_n, pool_n, _ = case.sequence(n).run(state_in_index=idx([slot]))
        close(o[case.cu[n] : case.cu[n + 1]], o_n)
        close(pool[slot], pool_n[slot])


@PROPS
@given(cases())
def test_tile_equals_interleave_with_value_heads_permuted(case):
    H, HV = case.q.shape[1], case.v.shape[1]
    G = HV // H
    # interleave head j reads key head j // G; tile head (j % G) * H + j // G reads the same one
    perm = [(j % G) * H + j // G for j in range(HV)]
    o_t, pool_t, _ = case.run(head_map="tile")
    inter = replace(case, v=case.v[:, perm], g=case.g[:, perm], beta=case.beta[:, perm],
                    pool=case.pool[:, perm])
    o_i, pool_i, _ = inter.run(head_map="interleave")
    close(o_i, o_t[:, perm])
    close(pool_i, pool_t[:, perm])


@PROPS
@given(cases())
def test_vk_layout_equals_kv_with_transposed_pool(case):
    o_kv, pool_kv, ts_kv = case.run(token_states=True)
    vk_pool = case.pool.transpose(-1, -2).contiguous()
    vk = replace(case, pool=vk_pool)
    ts_vk = torch.empty(ts_kv.shape[0], ts_kv.shape[1], *vk_pool.shape[2:], dtype=F64)
    pool_vk = vk_pool.clone()
    o_vk = gated_delta_net_reference(
        vk.q, vk.k, vk.v, vk.g, vk.beta, pool_vk, vk.cu, qk_l2norm=vk.l2,
        state_layout="vk", token_states=ts_vk,
    )
    close(o_vk, o_kv)
    close(pool_vk.transpose(-1, -2), pool_kv)
    close(ts_vk.transpose(-1, -2), ts_kv)


@PROPS
@given(cases(kda=False))
def test_kda_with_g_equal_across_k_equals_gda(case):
    K = case.q.shape[-1]
    o_gda, pool_gda, _ = case.run()
    o_kda, pool_kda, _ = replace(case, g=case.g[..., None].expand(-1, -1, K).contiguous()).run()
    close(o_kda, o_gda)
    close(pool_kda, pool_gda)


@PROPS
@given(cases())
def test_distinct_out_slot_leaves_in_slot_intact(case):
    N = case.N
    _, pool_inplace, _ = case.run()
    o, pool, _ = case.run(state_in_index=idx(range(N)), state_out_index=idx(range(N, 2 * N)))
    assert torch.equal(pool[:N], case.pool[:N])
    close(pool[N : 2 * N], pool_inplace[:N])


@PROPS
@given(cases(), st.data())
def test_negative_in_index_starts_from_zeros(case, data):
    neg = data.draw(st.lists(st.booleans(), min_size=case.N, max_size=case.N))
    ins = [-1 if z else n for n, z in enumerate(neg)]
    o, pool, _ = case.run(state_in_index=idx(ins), state_out_index=idx(range(case.N)))
    zeroed = case.pool.clone()
    zeroed[[n for n, z in enumerate(neg) if z]] = 0.0
    o_z, pool_z, _ = case.run(zeroed)
    close(o, o_z)
    close(pool, pool_z)


@PROPS
@given(cases(), st.data())
def test_negative_out_index_writes_nothing(case, data):
    pool32 = case.pool.float()
    skip = data.draw(st.lists(st.booleans(), min_size=case.N, max_size=case.N))
    outs = [-1 if s else n for n, s in enumerate(skip)]
    o_all, pool_all, _ = case.run(pool32)
    o, pool, _ = case.run(pool32, state_out_index=idx(outs))
    assert torch.equal(o, o_all)
    for n, s in enumerate(skip):
        assert torch.equal(pool[n], pool32[n] if s else pool_all[n])
    _, untouched, _ = case.run(pool32, state_out_index=idx([-1] * case.N))
    assert torch.equal(untouched, pool32)


@PROPS
@given(cases(), st.data())
def test_unused_pool_slots_untouched(case, data):
    ins = data.draw(st.permutations(range(case.P)))[: case.N]
    outs = data.draw(st.permutations(range(case.P)))[: case.N]
    _, pool, _ = case.run(state_in_index=idx(ins), state_out_index=idx(outs))
    for slot in set(range(case.P)) - set(outs):
        assert torch.equal(pool[slot], case.pool[slot])


@PROPS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=4), st.data())
def test_empty_sequences_copy_their_initial_state(lens, data):
    """Decision: a length-0 sequence writes its initial state (zeros for in < 0) to its out slot."""
    lens = [*lens, 0]  # at least one empty sequence
    N = len(lens)
    case = make_case(data.draw(st.integers(0, 2**31)), lens, 2, 2, 3, 2, P=2 * N)
    ins = [n if data.draw(st.booleans()) else -1 for n in range(N)]
    _, pool, _ = case.run(state_in_index=idx(ins), state_out_index=idx(range(N, 2 * N)))
    for n, (length, slot) in enumerate(zip(lens, ins, strict=True)):
        if length == 0:
            expect = case.pool[slot] if slot >= 0 else torch.zeros_like(case.pool[0])
            assert torch.equal(pool[N + n], expect)


@PROPS
@given(cases())
def test_token_states_track_the_recurrence(case):
    """token_states[last token] is the final state; o_t = K^-1/2 S_tᵀ q_t (updated state)."""
    o, pool, ts = case.run(token_states=True)
    assert not ts.isnan().any()
    for n in range(case.N):
        if case.lens[n]:
            assert torch.equal(ts[case.cu[n + 1] - 1], pool[n])
    if not case.l2:
        H, K = case.q.shape[1:]
        q = case.q.repeat_interleave(case.v.shape[1] // H, dim=1)
        close(o, K**-0.5 * torch.einsum("thkv,thk->thv", ts, q))


@PROPS
@given(cases(min_seqs=2))
def test_swapped_slots_read_before_write(case):
    rest = range(2, case.N)
    o, pool, _ = case.run(state_in_index=idx([0, 1, *rest]), state_out_index=idx([1, 0, *rest]))
    for n, (src, dst) in enumerate([(0, 1), (1, 0)]):
        o_n, pool_n, _ = case.sequence(n).run(state_in_index=idx([src]))
        close(o[case.cu[n] : case.cu[n + 1]], o_n)
        close(pool[dst], pool_n[src])


@PROPS
@given(cases(), st.floats(0.01, 4.0))
def test_scale_is_a_linear_output_factor(case, scale):
    o_default, pool_default, _ = case.run()
    o, pool, _ = case.run(scale=scale)
    close(o, o_default * (scale / case.q.shape[-1] ** -0.5))
    close(pool, pool_default)


def test_dtypes_fp32_inputs_bf16_pool():
    case = make_case(3, [3, 2], 2, 2, 4, 4, P=2, dtype=torch.float32)
    pool16 = case.pool.to(torch.bfloat16)
    o, pool, _ = case.run(pool16)
    o64, pool64, _ = case.run(pool16.to(F64))
    assert o.dtype == torch.float32 and pool.dtype == torch.bfloat16
    assert torch.equal(pool, pool64.to(torch.bfloat16))
    assert torch.equal(o, o64.to(torch.float32))


# ------------------------------------------------------------------------ validation

VALID = make_case(11, [2, 1], H=2, G=2, K=3, V=2, P=4)


def _args(**over):
    args = dict(
        q=VALID.q, k=VALID.k, v=VALID.v, g=VALID.g, beta=VALID.beta, state_pool=VALID.pool,
        cu_seqlens=VALID.cu, state_in_index=None, state_out_index=None,
        head_map="interleave", state_layout="kv", token_states=None,
    )
    args.update(over)
    return args


T3 = VALID.q.shape[0]
BAD = {
    "q rank": (dict(q=VALID.q[0]), r"q: shape \[2, 3\] must have rank 3"),
    "q empty heads": (dict(q=VALID.q[:, :0], k=VALID.k[:, :0]), r"q: .* empty head"),
    "q integer": (dict(q=VALID.q.long()), r"q: dtype torch.int64 is not a floating"),
    "pool integer": (dict(state_pool=VALID.pool.int()), r"state_pool: dtype torch.int32 is not"),
    "k shape": (dict(k=VALID.k[..., :2]), r"k: shape \[3, 2, 2\] does not match q's shape"),
    "v rank": (dict(v=VALID.v[0]), r"v: shape \[4, 2\] must have rank 3"),
    "v tokens": (dict(v=VALID.v[:2]), r"v: shape \[2, 4, 2\] does not match"),
    "HV not multiple": (dict(v=VALID.v[:, :3]), r"v: HV = 3 value heads is not a multiple"),
    "v empty": (dict(v=VALID.v[..., :0]), r"v: shape \[3, 4, 0\] has an empty head or value"),
    "g shape": (dict(g=VALID.g[..., None]), r"g: shape \[3, 4, 1\] is neither"),
    "beta shape": (dict(beta=VALID.beta[:, :2]), r"beta: shape \[3, 2\] does not match"),
    "pool rank": (dict(state_pool=VALID.pool[0]), r"state_pool: shape .* must have rank 4"),
    "pool HV": (dict(state_pool=VALID.pool[:, :2]), r"state_pool: shape \[4, 2, 3, 2\] does not"),
    "pool layout": (dict(state_layout="vk"), r"state_pool: .* the 'vk' layout"),
    "token_states shape": (dict(token_states=torch.empty(T3, 4, 2, 3)), r"token_states: shape"),
    "token_states dtype": (dict(token_states=torch.empty(T3, 4, 3, 2, dtype=torch.int64)),
                           r"token_states: dtype"),
    "head_map": (dict(head_map="blocked"), r"head_map: 'blocked' is not one of"),
    "state_layout": (dict(state_layout="kvk"), r"state_layout: 'kvk' is not one of"),
    "cu dtype": (dict(cu_seqlens=VALID.cu.int()), r"cu_seqlens: dtype torch.int32 must be"),
    "cu rank": (dict(cu_seqlens=VALID.cu[None]), r"cu_seqlens: shape \[1, 3\] must be \[N\+1\]"),
    "cu empty": (dict(cu_seqlens=idx([])), r"cu_seqlens: shape \[0\] must be"),
    "cu start": (dict(cu_seqlens=idx([1, 2, 3])), r"cu_seqlens: must start at 0, starts at 1"),
    "cu decreasing": (dict(cu_seqlens=idx([0, 3, 2, 3])),
                      r"cu_seqlens: must be non-decreasing, decreases at 1: 3 -> 2"),
    "cu end": (dict(cu_seqlens=idx([0, 2, 2])), r"cu_seqlens: ends at 2 but T_total = 3"),
    "in dtype": (dict(state_in_index=idx([0, 1]).int()),
                 r"state_in_index: dtype torch.int32 must be torch.int64"),
    "in length": (dict(state_in_index=idx([0, 1, 2])), r"state_in_index: shape \[3\] must"),
    "in range": (dict(state_in_index=idx([0, 4])), r"state_in_index: slot 4 is out of range"),
    "out range": (dict(state_out_index=idx([9, 0])), r"state_out_index: slot 9 is out of range"),
    "out length": (dict(state_out_index=idx([0])), r"state_out_index: shape \[1\] must be"),
    "out duplicate": (dict(state_in_index=idx([0, 1]), state_out_index=idx([2, 2])),
                      r"state_out_index: slot 2 is written by more than one sequence"),
    "in duplicate as out": (dict(state_in_index=idx([3, 3])),
                            r"state_in_index \(the default out slots\): slot 3 is written"),
    "default slots": (dict(state_pool=VALID.pool[:1]), r"state_in_index: default slots 0..1"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_validate_rejects(name):
    over, match = BAD[name]
    with pytest.raises(OpArgumentError, match=match):
        validate(**_args(**over))


def test_validate_accepts_and_reports_shapes():
    shp = validate(**_args(state_in_index=idx([1, 1]), state_out_index=idx([-1, 2])))
    assert (shp.T_total, shp.N, shp.P, shp.H, shp.HV, shp.K, shp.V, shp.kda, shp.group) == (
        3, 2, 4, 2, 4, 3, 2, False, 2,
    )
    assert validate(**_args(g=torch.zeros(3, 4, 3))).kda


def test_reference_validates_first():
    pool = VALID.pool.clone()
    with pytest.raises(OpArgumentError, match="state_out_index: slot 0 is written"):
        gated_delta_net_reference(VALID.q, VALID.k, VALID.v, VALID.g, VALID.beta, pool, VALID.cu,
                                  state_out_index=idx([0, 0]))
    assert torch.equal(pool, VALID.pool)


# -------------------------------------------------------------------------- public API


def test_triton_on_cpu_tensors_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = {name: x.float() if x.is_floating_point() else x for name, x in _pool_form_args().items()}
    with pytest.raises(OpArgumentError, match="backend 'triton' needs CUDA tensors, got cpu"):
        gated_delta_net(**args, backend="triton")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_kernels_refuse_fp64(backend):
    with pytest.raises(OpArgumentError, match=f"q: dtype torch.float64 is not supported by backend "
                                              f"'{backend}'"):
        gated_delta_net(**_pool_form_args(), backend=backend)


def _pool_form_args():
    return dict(q=VALID.q, k=VALID.k, v=VALID.v, g=VALID.g, beta=VALID.beta,
                state_pool=VALID.pool.clone(), cu_seqlens=VALID.cu)


def test_unknown_backend_and_algorithm():
    with pytest.raises(OpArgumentError, match="backend 'cuda' is not one of"):
        gated_delta_net(**_pool_form_args(), backend="cuda")
    with pytest.raises(OpArgumentError, match="algorithm 'fast' is not one of"):
        gated_delta_net(**_pool_form_args(), algorithm="fast")


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("algorithm", ["auto", "recurrent", "chunked"])
def test_api_dispatches_to_reference(backend, algorithm):
    args = _pool_form_args()
    o = gated_delta_net(**args, backend=backend, algorithm=algorithm)
    o_ref, pool_ref, _ = VALID.run()
    assert torch.equal(o, o_ref) and torch.equal(args["state_pool"], pool_ref)


def _batch_inputs(B=2, T=3, H=2, HV=4, K=3, V=2, kda=False, seed=5):
    case = make_case(seed, [T] * B, H, HV // H, K, V, P=B, kda=kda, dtype=torch.float32)
    batch = [x.reshape(B, T, *x.shape[1:]) for x in (case.q, case.k, case.v, case.g, case.beta)]
    return case, batch


def same(got: torch.Tensor, want: torch.Tensor, backend: str) -> bool:
    """Bit-equal through the reference; within SPEC's fp32 tolerance through a kernel."""
    if backend == "reference":
        return torch.equal(got, want)
    return got.shape == want.shape and got.dtype == want.dtype and rel_err(got, want) < 1e-5


# the fused-node plumbing runs through the oracle (exact) and through the default kernels
NODE_BACKENDS = pytest.mark.parametrize("backend", ["reference", "auto"])


@NODE_BACKENDS
@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("kda", [False, True])
def test_fused_node_batch_layout(layout, kda, backend):
    case, batch = _batch_inputs(kda=kda)
    attrs = GdnAttrs(scale=0.7, qk_l2norm=True, head_map="tile", state_layout=layout)
    state = case.pool.float() if layout == "kv" else case.pool.float().transpose(-1, -2)
    state = state.contiguous()
    before = [x.clone() for x in (*batch, state)]
    o, final, ts = run_fused_node([*batch, state], attrs, 3, backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(before, (*batch, state), strict=True))

    pool = state.clone()
    ts_ref = torch.empty_like(ts)
    o_ref = gated_delta_net_reference(
        case.q, case.k, case.v, case.g, case.beta, pool, case.cu, scale=0.7, qk_l2norm=True,
        head_map="tile", state_layout=layout, token_states=ts_ref,
    )
    assert o.shape == (2, 3, 4, 2) and o.dtype == torch.float32
    assert same(o, o_ref.reshape(o.shape), backend)
    assert final.shape == state.shape and same(final, pool, backend)
    assert ts.shape == (6, *state.shape[1:]) and same(ts, ts_ref, backend)


@NODE_BACKENDS
def test_fused_node_batch_layout_without_state(backend):
    case, batch = _batch_inputs()
    (o,) = run_fused_node(batch, GdnAttrs(), 1, backend=backend)
    o2, final = run_fused_node([*batch, None, None, None, None], GdnAttrs(), 2, backend=backend)
    pool = torch.zeros(2, 4, 3, 2)
    o_ref = gated_delta_net_reference(case.q, case.k, case.v, case.g, case.beta, pool, case.cu)
    assert same(o, o_ref.reshape(o.shape), backend) and torch.equal(o2, o)
    assert final.dtype == torch.float32 and same(final, pool, backend)


@NODE_BACKENDS
def test_fused_node_packed_layout_with_pool_and_indices(backend):
    case = make_case(9, [2, 0, 3], H=1, G=2, K=4, V=3, P=5, kda=True, dtype=torch.float32)
    pool = case.pool.float()
    ins, outs = idx([4, -1, 0]), idx([1, 3, -1])
    o, final, ts = run_fused_node(
        [case.q, case.k, case.v, case.g, case.beta, pool, case.cu, ins, outs], GdnAttrs(), 3,
        backend=backend,
    )
    assert torch.equal(pool, case.pool.float())
    pool_ref = pool.clone()
    ts_ref = torch.empty_like(ts)
    o_ref = gated_delta_net_reference(case.q, case.k, case.v, case.g, case.beta, pool_ref,
                                      case.cu, ins, outs, token_states=ts_ref)
    assert same(o, o_ref, backend) and same(final, pool_ref, backend)
    assert same(ts, ts_ref, backend)
    assert torch.equal(final[3], torch.zeros_like(final[3]))  # empty sequence from zeros


@NODE_BACKENDS
def test_fused_node_packed_layout_single_sequence_default(backend):
    case = make_case(4, [5], H=2, G=1, K=2, V=2, P=1, dtype=torch.float32)
    state = case.pool.float()
    o, final = run_fused_node([case.q, case.k, case.v, case.g, case.beta, state], GdnAttrs(), 2,
                              backend=backend)
    o_ref, pool_ref, _ = case.run(state)
    assert same(o, o_ref, backend) and same(final, pool_ref, backend)


def test_functional_packed_with_cu_seqlens():
    case = make_case(8, [1, 3], H=1, G=3, K=2, V=3, P=2)
    o, final = gated_delta_net_functional(case.q, case.k, case.v, case.g, case.beta, case.pool,
                                          case.cu, state_layout="kv")
    o_ref, pool_ref, _ = case.run()
    assert torch.equal(o, o_ref) and torch.equal(final, pool_ref)


FUSED_BAD = {
    "cu with batch": (lambda b, s: [*b, s, idx([0, 3, 6])], "cu_seqlens: only valid with"),
    "index without state": (lambda b, s: [*b, None, None, idx([0, 1])], "need a state"),
    "state not [N]": (lambda b, s: [*b, s[:1]], r"state: without state indices it must hold"),
    "missing q": (lambda b, s: [None, *b[1:]], "required input 'q' is missing"),
    "too many inputs": (lambda b, s: [*b, s, None, None, None, None], "10 inputs given"),
    "rank mix": (lambda b, s: [b[0], b[1], b[2][0], *b[3:]], "neither both rank 4"),
    "batch g": (lambda b, s: [*b[:3], b[3][:, :2], b[4]], r"g: shape \[2, 2, 4\] does not fit"),
}


@pytest.mark.parametrize("name", list(FUSED_BAD))
def test_fused_node_rejects(name):
    make, match = FUSED_BAD[name]
    case, batch = _batch_inputs()
    with pytest.raises(OpArgumentError, match=match):
        run_fused_node(make(batch, case.pool.float()), GdnAttrs(), 2)


@pytest.mark.parametrize("n", [0, 4])
def test_fused_node_output_count(n):
    _, batch = _batch_inputs()
    with pytest.raises(OpArgumentError, match=f"{n} outputs requested"):
        run_fused_node(batch, GdnAttrs(), n)


@pytest.mark.parametrize("algorithm", ["recurrent", "chunked"])
def test_cpu_kernels_run_in_and_out_of_inference_mode(algorithm):
    """The CPU kernels' cached workspace is shared by calls inside ``torch.inference_mode``
    (the runtime) and outside it; one must not poison the other."""
    torch.manual_seed(0)
    T, H, K = 5, 2, 8
    q, k, v = (torch.randn(T, H, K) for _ in range(3))
    g, beta = -torch.rand(T, H), torch.rand(T, H)
    cu, slots = torch.tensor([0, 2, T]), torch.tensor([2, 0])  # not a slot range: workspace
    results = []
    for inference in (True, False, True):
        pool = torch.randn(3, H, K, K, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode(inference):
            o = gated_delta_net(q, k, v, g, beta, pool, cu, slots, slots, backend="cpu",
                                algorithm=algorithm)
        results.append((o.clone(), pool.clone()))
    ref_pool = torch.randn(3, H, K, K, generator=torch.Generator().manual_seed(1)).double()
    ref_o = gated_delta_net(q.double(), k.double(), v.double(), g.double(), beta.double(), ref_pool,
                            cu, slots, slots, backend="reference")
    for o, pool in results:
        assert torch.allclose(o.double(), ref_o, atol=1e-4)
        assert torch.allclose(pool.double(), ref_pool, atol=1e-4)
