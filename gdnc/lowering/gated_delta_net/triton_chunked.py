"""Triton chunked GatedDeltaNet kernel (SPEC §2.1) for prefill over packed sequences.

Two launches, no host synchronisation:

1. ``triton_chunked_prepare._prepare_kernel``, one program per (64-token chunk, value head):
   the WY/UT transform of the chunk — W [T, HV, K], U [T, HV, V], the causal query-key
   matrix Aqk [T, HV, 64] (rows stored at their tokens) and the chunk's gate factors.
2. ``_chunk_state_kernel`` below, one program per (sequence, value head, V-block): the
   state tile S [BK, BV] stays in fp32 registers while the program walks the sequence's
   chunks::

       δ = U − W·S                                   (the chunk's updates, [64, BV])
       S = Γ_last S + (kfac ⊙ k)ᵀ·δ                  (GDA; KDA: Γ_last ⊙ S + kdᵀ·δ)
       o = (qfac ⊙ q)·S_start + Aqk·δ                (GDA; KDA: qg·S_start + Aqk·δ)

   With ``token_states`` the chunk-end update is replaced by a token-by-token pass over the
   chunk, S ← a_t S + k̂_t δ_tᵀ, which writes every intermediate state.

State tiles are read from ``state_src[in_index[n]]`` (negative: zeros) and written to
``state_dst[out_index[n]]`` (negative: skipped) through the pools' strides, so both layouts
("kv" [P, HV, K, V], "vk" [P, HV, V, K]) and strided pools work in place; every token and slot
offset is int64. A length-0 sequence copies its initial state to its out slot. Dots take
the inputs' dtype (bf16/fp16 operands, fp32 accumulation) or fp32 (tf32 / tf32x3 on the GPU,
see ``ChunkConfig``). Scratch: (K + V + 66)·T·HV elements (KDA: 2K·T·HV more).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gdnc.lowering.gated_delta_net.launch import GdnLaunch
from gdnc.lowering.gated_delta_net.triton_chunked_prepare import BT, _prepare_kernel
from gdnc.lowering.gated_delta_net.triton_program import L2NORM_EPS, sequence_program


@triton.jit(do_not_specialize=["n_chunks"])
def _chunk_state_kernel(
    q, k, g, o,  # [T, H, K] x2, [T, HV] or [T, HV, K], out [T, HV, V]
    w, u, aqk, qfac, kfac, qg, kd, glast,  # stage-1 outputs (see triton_chunked_prepare)
    src, dst, ts,  # pools [P, HV, ...]; token states [T, HV, ...] or None
    starts, lengths, in_index, out_index, n_chunks,
    src_p, src_h, src_k, src_v, dst_p, dst_h, dst_k, dst_v, ts_t, ts_h, ts_k, ts_v,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    INTERLEAVE: tl.constexpr, KDA: tl.constexpr, L2NORM: tl.constexpr, PREC: tl.constexpr,
):
    i_v, i_hv, i_h, i_n, start, length, slot_in, slot_out = sequence_program(
        starts, lengths, in_index, out_index, H, HV, V, BV, INTERLEAVE)
    wd = w.dtype.element_ty

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_s = m_k[:, None] & m_v[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if slot_in >= 0:
        S = tl.load(src + slot_in * src_p + i_hv * src_h + o_k[:, None] * src_k
                    + o_v[None, :] * src_v, mask=m_s, other=0.0).to(tl.float32)

    o_t = tl.arange(0, BT)
    causal = o_t[:, None] >= o_t[None, :]
    if KDA:
        q_rows, k_rows, qk_head, qk_stride = qg, kd, i_hv * K, HV * K
    else:
        q_rows, k_rows, qk_head, qk_stride = q, k, i_h * K, H * K
    for i_c in range(tl.cdiv(length, BT)):
        rows = start + i_c * BT + o_t
        m_t = o_t < length - i_c * BT
        b_w = tl.load(w + rows[:, None] * (HV * K) + i_hv * K + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.0).to(wd)
        b_u = tl.load(u + rows[:, None] * (HV * V) + i_hv * V + o_v[None, :],
                      mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
        b_a = tl.load(aqk + rows[:, None] * (HV * BT) + i_hv * BT + o_t[None, :],
                      mask=m_t[:, None] & causal, other=0.0).to(wd)
        b_q = tl.load(q_rows + rows[:, None] * qk_stride + qk_head + o_k[None, :],
                      mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_kt = tl.load(k_rows + rows[None, :] * qk_stride + qk_head + o_k[:, None],
                       mask=m_k[:, None] & m_t[None, :], other=0.0)  # [BK, BT]
        if not KDA:  # raw q, k rows: fold in the gate and norm factors
            qf = tl.load(qfac + rows * HV + i_hv, mask=m_t, other=0.0)
            kf = tl.load(kfac + rows * HV + i_hv, mask=m_t, other=0.0)
            b_q = b_q.to(tl.float32) * qf[:, None]
            b_kt = b_kt.to(tl.float32) * kf[None, :]
        b_q, b_kt = b_q.to(wd), b_kt.to(wd)

        b_s = S.to(wd)
        b_d = b_u - tl.dot(b_w, b_s, input_precision=PREC)
        b_dw = b_d.to(wd)
        if ts is not None:  # every token's state: walk the chunk token by token
            for j in range(tl.minimum(length - i_c * BT, BT)):
                row = start + i_c * BT + j
                b_k = tl.load(k + row * (H * K) + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
                if L2NORM:
                    b_k = b_k / tl.sqrt(tl.sum(b_k * b_k) + L2NORM_EPS)
                if KDA:
                    b_g = tl.load(g + row * (HV * K) + i_hv * K + o_k, mask=m_k, other=0.0)
                    S = S * tl.exp(b_g.to(tl.float32))[:, None]
                else:
                    S = S * tl.exp(tl.load(g + row * HV + i_hv).to(tl.float32))
                b_dj = tl.sum(tl.where((o_t == j)[:, None], b_d, 0.0), 0)
                S += b_k[:, None] * b_dj[None, :]
                tl.store(ts + row * ts_t + i_hv * ts_h + o_k[:, None] * ts_k + o_v[None, :] * ts_v,
                         S.to(ts.dtype.element_ty), mask=m_s)
        else:
            chunk = i_n * n_chunks + i_c
            if KDA:
                S = S * tl.load(glast + (chunk * HV + i_hv) * K + o_k, mask=m_k, other=0.0)[:, None]
            else:
                S = S * tl.load(glast + chunk * HV + i_hv)
            S = tl.dot(b_kt, b_dw, S, input_precision=PREC)
        # the outputs last: no value feeding a dot is modified after it (Triton 3.6 on Hopper
        # computed wrong 16-bit results otherwise)
        b_o = tl.dot(b_q, b_s, input_precision=PREC)
        b_o = tl.dot(b_a, b_dw, b_o, input_precision=PREC)
        tl.store(o + rows[:, None] * (HV * V) + i_hv * V + o_v[None, :],
                 b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])

    if slot_out >= 0:
        tl.store(dst + slot_out * dst_p + i_hv * dst_h + o_k[:, None] * dst_k + o_v[None, :] * dst_v,
                 S.to(dst.dtype.element_ty), mask=m_s)


@dataclass(frozen=True)
class ChunkConfig:
    """Launch parameters: stage 2's V-block ``bv``, warps and pipeline stages; stage 1's K
    and V pieces (``bkc``, ``bvc``: powers of two ≥ 16) and warps. ``prec`` / ``prep_prec``:
    the dot precision with fp32 inputs in stage 2 / stage 1 ("tf32", "tf32x3" or "ieee"; all
    tf32 gave 1.7e-3 relative error at T=1K on an H100, tf32x3 in stage 1 8e-4 up to T=16K).
    With 16-bit inputs stage 2 needs ``num_stages`` ≥ 2: one stage computed wrong results
    with Triton 3.6 on an H100."""

    bv: int
    num_warps: int
    num_stages: int
    bkc: int
    bvc: int
    prep_warps: int
    prec: str = "tf32"
    prep_prec: str = "tf32x3"


def _block(n: int, device: torch.device) -> int:
    """Padded block covering a head dim: a power of two, at least 64 on the GPU (few compiled
    variants), at least 16 (the smallest dot) under the CPU interpreter."""
    return max(64 if device.type == "cuda" else 16, triton.next_power_of_2(n))


@functools.cache
def config(kda: bool, wide: bool) -> ChunkConfig:
    """Default launch parameters for per-key gates (``kda``) and fp32 dot operands (``wide``:
    twice the shared memory per pipeline stage). Blocks are clamped to the padded head dims."""
    gda16 = not (kda or wide)  # 1 warp, 32-wide K pieces: faster on an H100 (measured at 8K)
    return ChunkConfig(bv=32, num_warps=4, num_stages=1 if wide else 2,
                       bkc=64 if wide and not kda else 32, bvc=64, prep_warps=1 if gda16 else 4)


def _state_strides(x: torch.Tensor | None, layout: str) -> tuple[int, int, int, int]:
    """(slot or token, head, key row, value column) strides of a pool / token-states tensor."""
    if x is None:
        return (0, 0, 0, 0)
    s = x.stride()
    return (s[0], s[1], s[2], s[3]) if layout == "kv" else (s[0], s[1], s[3], s[2])


def _work_dtype(q: torch.Tensor) -> torch.dtype:
    """Dot operand dtype: 16-bit inputs keep theirs on the GPU; fp32 otherwise (also under the
    CPU interpreter, whose bf16 dot is wrong)."""
    low = q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cuda"
    return q.dtype if low else torch.float32


@dataclass(frozen=True)
class Scratch:
    """Stage-1 outputs (see ``triton_chunked_prepare``); unused ones are None."""

    w: torch.Tensor  # [T, HV, K] work dtype
    u: torch.Tensor  # [T, HV, V]
    aqk: torch.Tensor  # [T, HV, BT]
    qfac: torch.Tensor | None  # GDA [T, HV] fp32
    kfac: torch.Tensor | None
    qg: torch.Tensor | None  # KDA [T, HV, K]
    kd: torch.Tensor | None
    glast: torch.Tensor  # [N * n_chunks, HV] or [N * n_chunks, HV, K] fp32
    n_chunks: int


def _flags(launch: GdnLaunch, cfg_prec: str) -> dict:
    """Constexpr arguments shared by both stages. ``PREC``: ``cfg_prec`` with fp32 inputs;
    16-bit inputs keep Triton's default (tf32x3 on 16-bit operands computed wrong results)."""
    shp, opts = launch.shapes, launch.opts
    return dict(H=shp.H, HV=shp.HV, K=shp.K, V=shp.V, INTERLEAVE=opts.head_map == "interleave",
                L2NORM=opts.qk_l2norm, KDA=shp.kda,
                PREC=cfg_prec if _work_dtype(launch.q) == torch.float32 else "tf32")


def prepare(launch: GdnLaunch, cfg: ChunkConfig) -> Scratch:
    """Stage 1 over every chunk of ``launch``'s sequences."""
    shp = launch.shapes
    n, T, HV, K, V = launch.num_seqs, shp.T_total, shp.HV, shp.K, shp.V
    dev = launch.q.device
    wd = _work_dtype(launch.q)
    n_chunks = triton.cdiv(launch.max_len, BT.value)

    def new(*size: int, dtype: torch.dtype = wd) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=dev)

    f32 = torch.float32
    sc = Scratch(w=new(T, HV, K), u=new(T, HV, V), aqk=new(T, HV, BT.value),
                 qfac=None if shp.kda else new(T, HV, dtype=f32),
                 kfac=None if shp.kda else new(T, HV, dtype=f32),
                 qg=new(T, HV, K) if shp.kda else None, kd=new(T, HV, K) if shp.kda else None,
                 glast=new(n * n_chunks, HV, *([K] if shp.kda else []), dtype=f32), n_chunks=n_chunks)
    if n_chunks:
        bk, bvp = _block(K, dev), _block(V, dev)
        bkc, bvc = min(cfg.bkc, bk), min(cfg.bvc, bvp)
        _prepare_kernel[(n * n_chunks, HV)](
            *(x.contiguous() for x in (launch.q, launch.k, launch.v, launch.g, launch.beta)),
            sc.w, sc.u, sc.aqk, sc.qfac, sc.kfac, sc.qg, sc.kd, sc.glast,
            launch.starts, launch.lengths, n_chunks, launch.opts.scale,
            BKC=bkc, NKC=bk // bkc, BVC=bvc, NVC=bvp // bvc, num_warps=cfg.prep_warps,
            **_flags(launch, cfg.prep_prec),
        )
    return sc


def states(launch: GdnLaunch, cfg: ChunkConfig, sc: Scratch) -> None:
    """Stage 2: walk every sequence's chunks; write o, final states and token states."""
    shp, layout = launch.shapes, launch.opts.state_layout
    dev = launch.q.device
    bv = min(cfg.bv, _block(shp.V, dev))
    ts = launch.token_states
    _chunk_state_kernel[(launch.num_seqs * shp.HV * triton.cdiv(shp.V, bv),)](
        launch.q.contiguous(), launch.k.contiguous(), launch.g.contiguous(), launch.o,
        sc.w, sc.u, sc.aqk, sc.qfac, sc.kfac, sc.qg, sc.kd, sc.glast,
        launch.state_src, launch.state_dst, ts,
        launch.starts, launch.lengths, launch.in_index, launch.out_index, sc.n_chunks,
        *_state_strides(launch.state_src, layout), *_state_strides(launch.state_dst, layout),
        *_state_strides(ts, layout),
        BK=_block(shp.K, dev), BV=bv, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **_flags(launch, cfg.prec),
    )


def launch_kernels(launch: GdnLaunch, cfg: ChunkConfig) -> None:
    """Run both stages over ``launch`` with launch parameters ``cfg`` (``run`` uses
    ``config``; exposed for tuning sweeps)."""
    if launch.num_seqs:
        states(launch, cfg, prepare(launch, cfg))


def run(launch: GdnLaunch) -> None:
    """Chunked GatedDeltaNet over the sequences of ``launch`` (contract: ``launch.py``)."""
    launch_kernels(launch, config(launch.shapes.kda, _work_dtype(launch.q) == torch.float32))
