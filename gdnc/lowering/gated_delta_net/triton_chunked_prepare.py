"""Triton chunked GatedDeltaNet, stage 1: the per-chunk WY/UT transform (SPEC §2.1).

One program per (chunk of 64 tokens, value head); chunks are numbered per sequence, so
program ``(n * n_chunks + c, hv)`` owns tokens ``starts[n] + 64c ...`` of sequence n (it exits
when the sequence is shorter). With Γ_t the product of the decays from the chunk's start to
token t (per key row for KDA), q̂, k̂ the (optionally l2-normalised) query and key of the
value head and β the write strengths, the chunk's rows satisfy

    δ = U − W·S0,    U = A·(β v),    W = A·(β k̂ ⊙ Γ),    A = (I + L)⁻¹,
    L[t, s] = β_t Σ_i k̂_t[i] k̂_s[i] Γ_t[i] / Γ_s[i]   (s < t)

where S0 is the state at the chunk's start and δ_t the update written by token t. The program
builds L in four 16-row sub-blocks (10 lower blocks), inverts the diagonal blocks by forward
substitution and merges them (block triangular inverse), then writes W, U and the causal
query-key matrix ``Aqk[t, s] = scale Σ_i q̂_t[i] k̂_s[i] Γ_t[i] / Γ_s[i]`` (s ≤ t; GDA one
[64, 64] tile, zeros above the diagonal; KDA its 10 lower sub-blocks only). Decay ratios
are only ever exp of non-positive cumulative-gate differences: for KDA the off-diagonal
blocks factor through the gate at the end of the previous sub-block, the diagonal blocks are
summed column by column.

Per-chunk outputs for stage 2 (``triton_chunked``): GDA ``qfac = scale·|q|⁻¹·Γ_t`` and
``kfac = |k|⁻¹·Γ_last/Γ_t`` per row (stage 2 reads raw q, k); KDA ``qg = scale·q̂⊙Γ`` and
``kd = k̂⊙Γ_last/Γ`` rows. ``glast`` [chunks, HV, K or 1] holds Γ_last.
"""

from __future__ import annotations

import triton
import triton.language as tl

from gdnc.lowering.gated_delta_net.triton_program import L2NORM_EPS

BT = tl.constexpr(64)  # chunk length
BC = tl.constexpr(16)  # sub-block length: BT // BC = 4 sub-blocks


@triton.jit
def _inv_diag(L0, L1, L2, L3, o_i):
    """(I + L)⁻¹ of four strictly lower [BC, BC] blocks by forward substitution, row by row
    (the four independent recurrences interleaved)."""
    a0, a1, a2, a3 = -L0, -L1, -L2, -L3
    for i in range(2, BC):
        sel = (o_i == i)[:, None]
        r0 = tl.sum(tl.where(sel, -L0, 0.0), 0)
        r1 = tl.sum(tl.where(sel, -L1, 0.0), 0)
        r2 = tl.sum(tl.where(sel, -L2, 0.0), 0)
        r3 = tl.sum(tl.where(sel, -L3, 0.0), 0)
        a0 = tl.where(sel, (r0 + tl.sum(r0[:, None] * a0, 0))[None, :], a0)
        a1 = tl.where(sel, (r1 + tl.sum(r1[:, None] * a1, 0))[None, :], a1)
        a2 = tl.where(sel, (r2 + tl.sum(r2[:, None] * a2, 0))[None, :], a2)
        a3 = tl.where(sel, (r3 + tl.sum(r3[:, None] * a3, 0))[None, :], a3)
    eye = tl.where(o_i[:, None] == o_i[None, :], 1.0, 0.0)
    return a0 + eye, a1 + eye, a2 + eye, a3 + eye


@triton.jit
def _kda_diag(xb, kb, gb, acc, o_i):
    """Add an exact per-key-decayed [BC, BC] diagonal block of one K piece to acc.

    xb (queries or keys), kb (keys), gb (cumulative gates) [BC, BKC] fp32 of one sub-block;
    column s gets Σ_i x_t[i] k_s[i] exp(G_t[i] − G_s[i]) for rows t ≥ s (a non-positive
    exponent).
    """
    for s in range(BC):
        sel = (o_i == s)[:, None]
        ks = tl.sum(tl.where(sel, kb, 0.0), 0)
        gs = tl.sum(tl.where(sel, gb, 0.0), 0)
        e = tl.exp(tl.where(o_i[:, None] >= s, gb - gs[None, :], float("-inf"))) * ks[None, :]
        acc += tl.where((o_i == s)[None, :], tl.sum(xb * e, 1)[:, None], 0.0)
    return acc


@triton.jit
def _rows2d(ptr, rows, m_rows, stride, cols, m_cols):
    """Load a [len(rows), len(cols)] tile: row r at ``ptr + rows[r] * stride`` (int64 rows)."""
    return tl.load(ptr + rows[:, None] * stride + cols[None, :],
                   mask=m_rows[:, None] & m_cols[None, :], other=0.0)


@triton.jit
def _rows4(ptr, r0, r1, r2, r3, m0, m1, m2, m3, stride, cols, m_cols):
    """``_rows2d`` of the four row blocks of a chunk, as fp32."""
    return (_rows2d(ptr, r0, m0, stride, cols, m_cols).to(tl.float32),
            _rows2d(ptr, r1, m1, stride, cols, m_cols).to(tl.float32),
            _rows2d(ptr, r2, m2, stride, cols, m_cols).to(tl.float32),
            _rows2d(ptr, r3, m3, stride, cols, m_cols).to(tl.float32))


@triton.jit
def _store2d(ptr, x, rows, m_rows, stride, cols, m_cols):
    tl.store(ptr + rows[:, None] * stride + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=m_rows[:, None] & m_cols[None, :])


@triton.jit
def _gate_piece(g, r0, r1, r2, r3, m0, m1, m2, m3, o_k, m_k, HVK):
    """KDA: cumulative gates of one K piece for the 4 sub-blocks, and the carries c_b (the
    cumulative gate at the end of sub-block b−1; c4 = the chunk's total)."""
    g0, g1, g2, g3 = _rows4(g, r0, r1, r2, r3, m0, m1, m2, m3, HVK, o_k, m_k)
    c1 = tl.sum(g0, 0)
    c2 = c1 + tl.sum(g1, 0)
    c3 = c2 + tl.sum(g2, 0)
    c4 = c3 + tl.sum(g3, 0)
    return (tl.cumsum(g0, 0), tl.cumsum(g1, 0) + c1[None, :], tl.cumsum(g2, 0) + c2[None, :],
            tl.cumsum(g3, 0) + c3[None, :], c1, c2, c3, c4)


@triton.jit
def _kda_off(xa, kj, e, acc, wd, PREC: tl.constexpr):
    """Off-diagonal KDA block: acc += xa·(kj ⊙ e)ᵀ."""
    return tl.dot(xa, tl.trans((kj * e).to(wd)), acc, input_precision=PREC)


@triton.jit
def _blocks(x, k, g, r0, r1, r2, r3, m0, m1, m2, m3, wd,
            H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, BKC: tl.constexpr,
            NKC: tl.constexpr, KDA: tl.constexpr, PREC: tl.constexpr):
    """The 10 lower [BC, BC] sub-blocks of X·Kᵀ over a chunk (x = q or k rows), K piece by
    piece, and the squared row norms of x and k per sub-block (fp32).

    KDA: the per-key decay ratio Γ_t/Γ_s is inside the sum: off-diagonal blocks scale rows of
    sub-block b by exp(G − c_b) and columns by exp(c_b − G), c_b the cumulative gate at the
    end of sub-block b−1; diagonal blocks are summed column by column (``_kda_diag``). GDA:
    plain products (the caller applies the scalar decay ratios).
    """
    o_i = tl.arange(0, BC)
    zero = tl.zeros([BC, BC], dtype=tl.float32)
    a00, a11, a22, a33, a10, a20, a21, a30, a31, a32 = (
        zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)
    vec = tl.zeros([BC], dtype=tl.float32)
    nx0, nx1, nx2, nx3, nk0, nk1, nk2, nk3 = vec, vec, vec, vec, vec, vec, vec, vec
    for ic in range(NKC):
        o_k = ic * BKC + tl.arange(0, BKC)
        m_k = o_k < K
        k0, k1, k2, k3 = _rows4(k, r0, r1, r2, r3, m0, m1, m2, m3, H * K, o_k, m_k)
        x0, x1, x2, x3 = _rows4(x, r0, r1, r2, r3, m0, m1, m2, m3, H * K, o_k, m_k)
        nk0, nk1 = nk0 + tl.sum(k0 * k0, 1), nk1 + tl.sum(k1 * k1, 1)
        nk2, nk3 = nk2 + tl.sum(k2 * k2, 1), nk3 + tl.sum(k3 * k3, 1)
        nx0, nx1 = nx0 + tl.sum(x0 * x0, 1), nx1 + tl.sum(x1 * x1, 1)
        nx2, nx3 = nx2 + tl.sum(x2 * x2, 1), nx3 + tl.sum(x3 * x3, 1)
        if KDA:
            G0, G1, G2, G3, c1, c2, c3, _ = _gate_piece(g, r0, r1, r2, r3, m0, m1, m2, m3,
                                                        o_k, m_k, HV * K)
            a00 = _kda_diag(x0, k0, G0, a00, o_i)
            a11 = _kda_diag(x1, k1, G1, a11, o_i)
            a22 = _kda_diag(x2, k2, G2, a22, o_i)
            a33 = _kda_diag(x3, k3, G3, a33, o_i)
            xa = (x1 * tl.exp(G1 - c1[None, :])).to(wd)
            a10 = _kda_off(xa, k0, tl.exp(c1[None, :] - G0), a10, wd, PREC)
            xa = (x2 * tl.exp(G2 - c2[None, :])).to(wd)
            a20 = _kda_off(xa, k0, tl.exp(c2[None, :] - G0), a20, wd, PREC)
            a21 = _kda_off(xa, k1, tl.exp(c2[None, :] - G1), a21, wd, PREC)
            xa = (x3 * tl.exp(G3 - c3[None, :])).to(wd)
            a30 = _kda_off(xa, k0, tl.exp(c3[None, :] - G0), a30, wd, PREC)
            a31 = _kda_off(xa, k1, tl.exp(c3[None, :] - G1), a31, wd, PREC)
            a32 = _kda_off(xa, k2, tl.exp(c3[None, :] - G2), a32, wd, PREC)
        else:
            x0, x1, x2, x3 = x0.to(wd), x1.to(wd), x2.to(wd), x3.to(wd)
            kt0, kt1 = tl.trans(k0.to(wd)), tl.trans(k1.to(wd))
            kt2, kt3 = tl.trans(k2.to(wd)), tl.trans(k3.to(wd))
            a00 = tl.dot(x0, kt0, a00, input_precision=PREC)
            a11 = tl.dot(x1, kt1, a11, input_precision=PREC)
            a22 = tl.dot(x2, kt2, a22, input_precision=PREC)
            a33 = tl.dot(x3, kt3, a33, input_precision=PREC)
            a10 = tl.dot(x1, kt0, a10, input_precision=PREC)
            a20 = tl.dot(x2, kt0, a20, input_precision=PREC)
            a21 = tl.dot(x2, kt1, a21, input_precision=PREC)
            a30 = tl.dot(x3, kt0, a30, input_precision=PREC)
            a31 = tl.dot(x3, kt1, a31, input_precision=PREC)
            a32 = tl.dot(x3, kt2, a32, input_precision=PREC)
    return a00, a11, a22, a33, a10, a20, a21, a30, a31, a32, nx0, nx1, nx2, nx3, nk0, nk1, nk2, nk3


@triton.jit
def _rnorm(n, factor, L2NORM: tl.constexpr):
    """factor / sqrt(n + eps) with l2-normalisation, else factor (per row)."""
    if L2NORM:
        return factor / tl.sqrt(n + L2NORM_EPS)
    else:
        return tl.zeros_like(n) + factor


@triton.jit
def _aqk_gda(q, k, g, aqk, qfac, kfac, glast, t0, nt, scale, wd,
             H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, BKC: tl.constexpr,
             NKC: tl.constexpr, L2NORM: tl.constexpr, PREC: tl.constexpr):
    """GDA: the chunk's [BT, BT] Aqk in one tile, and the row factors qfac = scale|q|⁻¹Γ_t,
    kfac = |k|⁻¹Γ_last/Γ_t and Γ_last for stage 2."""
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = o_t < nt
    gg = tl.load(g + rows * HV, mask=m_t, other=0.0).to(tl.float32)
    G = tl.cumsum(gg, 0)
    G_last = tl.sum(gg, 0)
    qk = tl.zeros([BT, BT], dtype=tl.float32)
    nq = tl.zeros([BT], dtype=tl.float32)
    nk = tl.zeros([BT], dtype=tl.float32)
    for ic in tl.static_range(NKC):
        o_k = ic * BKC + tl.arange(0, BKC)
        m_k = o_k < K
        bq = _rows2d(q, rows, m_t, H * K, o_k, m_k)
        bk = _rows2d(k, rows, m_t, H * K, o_k, m_k)
        nq += tl.sum(bq.to(tl.float32) * bq.to(tl.float32), 1)
        nk += tl.sum(bk.to(tl.float32) * bk.to(tl.float32), 1)
        qk = tl.dot(bq.to(wd), tl.trans(bk.to(wd)), qk, input_precision=PREC)
    rq = _rnorm(nq, scale, L2NORM)
    rk = _rnorm(nk, 1.0, L2NORM)
    causal = o_t[:, None] >= o_t[None, :]
    qk = tl.where(causal, qk * rq[:, None] * rk[None, :] * tl.exp(G[:, None] - G[None, :]), 0.0)
    _store2d(aqk, qk, rows, m_t, HV * BT, o_t, o_t < BT)
    tl.store(qfac + rows * HV, rq * tl.exp(G), mask=m_t)
    tl.store(kfac + rows * HV, rk * tl.exp(G_last - G), mask=m_t)
    tl.store(glast, tl.exp(G_last))


@triton.jit(do_not_specialize=["n_chunks"])
def _prepare_kernel(
    q, k, v, g, beta,  # [T, H, K] x2, [T, HV, V], [T, HV] or [T, HV, K], [T, HV]
    w, u, aqk,  # out: [T, HV, K], [T, HV, V], [T, HV, BT] (work dtype)
    qfac, kfac, qg, kd, glast,  # out: GDA [T, HV] x2; KDA [T, HV, K] x2; [chunks, HV, K or 1]
    starts, lengths, n_chunks, scale,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BKC: tl.constexpr, NKC: tl.constexpr, BVC: tl.constexpr, NVC: tl.constexpr,
    INTERLEAVE: tl.constexpr, KDA: tl.constexpr, L2NORM: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i_hv = tl.program_id(1).to(tl.int64)
    i_n = pid // n_chunks
    i_c = pid % n_chunks
    length = tl.load(lengths + i_n).to(tl.int64)
    if i_c * BT >= length:
        return
    t0 = tl.load(starts + i_n).to(tl.int64) + i_c * BT
    nt = length - i_c * BT
    if INTERLEAVE:
        i_h = i_hv // (HV // H)
    else:
        i_h = i_hv % H
    wd = w.dtype.element_ty
    q += i_h * K
    k += i_h * K
    v += i_hv * V
    beta += i_hv
    w += i_hv * K
    u += i_hv * V
    aqk += i_hv * BT
    o_i = tl.arange(0, BC)
    r0, r1, r2, r3 = t0 + o_i, t0 + o_i + BC, t0 + o_i + 2 * BC, t0 + o_i + 3 * BC
    m0, m1, m2, m3 = o_i < nt, o_i + BC < nt, o_i + 2 * BC < nt, o_i + 3 * BC < nt
    b0 = tl.load(beta + r0 * HV, mask=m0, other=0.0).to(tl.float32)
    b1 = tl.load(beta + r1 * HV, mask=m1, other=0.0).to(tl.float32)
    b2 = tl.load(beta + r2 * HV, mask=m2, other=0.0).to(tl.float32)
    b3 = tl.load(beta + r3 * HV, mask=m3, other=0.0).to(tl.float32)
    strict = o_i[:, None] > o_i[None, :]
    causal = o_i[:, None] >= o_i[None, :]

    # ---- 1. Aqk and the key-key sub-blocks
    if KDA:
        g += i_hv * K
        qg += i_hv * K
        kd += i_hv * K
        glast += (pid * HV + i_hv) * K
        qk00, qk11, qk22, qk33, qk10, qk20, qk21, qk30, qk31, qk32, nq0, nq1, nq2, nq3, \
            _, _, _, _ = _blocks(q, k, g, r0, r1, r2, r3, m0, m1, m2, m3, wd,
                                 H, HV, K, BKC, NKC, KDA, PREC)
        rq0, rq1 = _rnorm(nq0, scale, L2NORM), _rnorm(nq1, scale, L2NORM)
        rq2, rq3 = _rnorm(nq2, scale, L2NORM), _rnorm(nq3, scale, L2NORM)
        kk00, kk11, kk22, kk33, kk10, kk20, kk21, kk30, kk31, kk32, _, _, _, _, \
            nk0, nk1, nk2, nk3 = _blocks(k, k, g, r0, r1, r2, r3, m0, m1, m2, m3, wd,
                                         H, HV, K, BKC, NKC, KDA, PREC)
        rk0, rk1 = _rnorm(nk0, 1.0, L2NORM), _rnorm(nk1, 1.0, L2NORM)
        rk2, rk3 = _rnorm(nk2, 1.0, L2NORM), _rnorm(nk3, 1.0, L2NORM)
        o_c = tl.arange(0, BC)
        m_c = o_c < BC
        _store2d(aqk, tl.where(causal, qk00 * rq0[:, None] * rk0[None, :], 0.0), r0, m0, HV * BT,
                 o_c, m_c)
        _store2d(aqk, qk10 * rq1[:, None] * rk0[None, :], r1, m1, HV * BT, o_c, m_c)
        _store2d(aqk, tl.where(causal, qk11 * rq1[:, None] * rk1[None, :], 0.0), r1, m1, HV * BT,
                 o_c + BC, m_c)
        _store2d(aqk, qk20 * rq2[:, None] * rk0[None, :], r2, m2, HV * BT, o_c, m_c)
        _store2d(aqk, qk21 * rq2[:, None] * rk1[None, :], r2, m2, HV * BT, o_c + BC, m_c)
        _store2d(aqk, tl.where(causal, qk22 * rq2[:, None] * rk2[None, :], 0.0), r2, m2, HV * BT,
                 o_c + 2 * BC, m_c)
        _store2d(aqk, qk30 * rq3[:, None] * rk0[None, :], r3, m3, HV * BT, o_c, m_c)
        _store2d(aqk, qk31 * rq3[:, None] * rk1[None, :], r3, m3, HV * BT, o_c + BC, m_c)
        _store2d(aqk, qk32 * rq3[:, None] * rk2[None, :], r3, m3, HV * BT, o_c + 2 * BC, m_c)
        _store2d(aqk, tl.where(causal, qk33 * rq3[:, None] * rk3[None, :], 0.0), r3, m3, HV * BT,
                 o_c + 3 * BC, m_c)
    else:
        g += i_hv
        _aqk_gda(q, k, g, aqk, qfac + i_hv, kfac + i_hv, glast + pid * HV + i_hv, t0, nt, scale,
                 wd, H, HV, K, BKC, NKC, L2NORM, PREC)
        g0 = tl.load(g + r0 * HV, mask=m0, other=0.0).to(tl.float32)
        g1 = tl.load(g + r1 * HV, mask=m1, other=0.0).to(tl.float32)
        g2 = tl.load(g + r2 * HV, mask=m2, other=0.0).to(tl.float32)
        g3 = tl.load(g + r3 * HV, mask=m3, other=0.0).to(tl.float32)
        c1 = tl.sum(g0, 0)
        c2 = c1 + tl.sum(g1, 0)
        c3 = c2 + tl.sum(g2, 0)
        G0, G1 = tl.cumsum(g0, 0), tl.cumsum(g1, 0) + c1
        G2, G3 = tl.cumsum(g2, 0) + c2, tl.cumsum(g3, 0) + c3
        kk00, kk11, kk22, kk33, kk10, kk20, kk21, kk30, kk31, kk32, _, _, _, _, \
            nk0, nk1, nk2, nk3 = _blocks(k, k, g, r0, r1, r2, r3, m0, m1, m2, m3, wd,
                                         H, HV, K, BKC, NKC, KDA, PREC)
        rk0, rk1 = _rnorm(nk0, 1.0, L2NORM), _rnorm(nk1, 1.0, L2NORM)
        rk2, rk3 = _rnorm(nk2, 1.0, L2NORM), _rnorm(nk3, 1.0, L2NORM)
        # scalar gates: a block's decay ratios are an outer difference (masked where positive)
        kk00 = tl.where(strict, kk00 * tl.exp(G0[:, None] - G0[None, :]), 0.0)
        kk11 = tl.where(strict, kk11 * tl.exp(G1[:, None] - G1[None, :]), 0.0)
        kk22 = tl.where(strict, kk22 * tl.exp(G2[:, None] - G2[None, :]), 0.0)
        kk33 = tl.where(strict, kk33 * tl.exp(G3[:, None] - G3[None, :]), 0.0)
        kk10 = kk10 * tl.exp(G1[:, None] - G0[None, :])
        kk20 = kk20 * tl.exp(G2[:, None] - G0[None, :])
        kk21 = kk21 * tl.exp(G2[:, None] - G1[None, :])
        kk30 = kk30 * tl.exp(G3[:, None] - G0[None, :])
        kk31 = kk31 * tl.exp(G3[:, None] - G1[None, :])
        kk32 = kk32 * tl.exp(G3[:, None] - G2[None, :])

    # ---- 2. L = β-scaled, normalised key-key blocks (strictly lower); A = (I + L)⁻¹
    L00 = tl.where(strict, kk00 * (b0 * rk0)[:, None] * rk0[None, :], 0.0)
    L11 = tl.where(strict, kk11 * (b1 * rk1)[:, None] * rk1[None, :], 0.0)
    L22 = tl.where(strict, kk22 * (b2 * rk2)[:, None] * rk2[None, :], 0.0)
    L33 = tl.where(strict, kk33 * (b3 * rk3)[:, None] * rk3[None, :], 0.0)
    L10 = kk10 * (b1 * rk1)[:, None] * rk0[None, :]
    L20 = kk20 * (b2 * rk2)[:, None] * rk0[None, :]
    L21 = kk21 * (b2 * rk2)[:, None] * rk1[None, :]
    L30 = kk30 * (b3 * rk3)[:, None] * rk0[None, :]
    L31 = kk31 * (b3 * rk3)[:, None] * rk1[None, :]
    L32 = kk32 * (b3 * rk3)[:, None] * rk2[None, :]
    A00, A11, A22, A33 = _inv_diag(L00, L11, L22, L33, o_i)
    A10 = -tl.dot(A11, tl.dot(L10, A00, input_precision=PREC), input_precision=PREC)
    A21 = -tl.dot(A22, tl.dot(L21, A11, input_precision=PREC), input_precision=PREC)
    A32 = -tl.dot(A33, tl.dot(L32, A22, input_precision=PREC), input_precision=PREC)
    A20 = -tl.dot(A22, tl.dot(L20, A00, input_precision=PREC)
                  + tl.dot(L21, A10, input_precision=PREC), input_precision=PREC)
    A31 = -tl.dot(A33, tl.dot(L31, A11, input_precision=PREC)
                  + tl.dot(L32, A21, input_precision=PREC), input_precision=PREC)
    A30 = -tl.dot(A33, tl.dot(L30, A00, input_precision=PREC) + tl.dot(L31, A10, input_precision=PREC)
                  + tl.dot(L32, A20, input_precision=PREC), input_precision=PREC)

    # ---- 3. W = A·(β k̂ ⊙ Γ) (and KDA's gated q, k rows), K piece by piece
    if not KDA:
        s0, s1 = b0 * rk0 * tl.exp(G0), b1 * rk1 * tl.exp(G1)
        s2, s3 = b2 * rk2 * tl.exp(G2), b3 * rk3 * tl.exp(G3)
    for ic in tl.static_range(NKC):
        o_k = ic * BKC + tl.arange(0, BKC)
        m_k = o_k < K
        x0, x1, x2, x3 = _rows4(k, r0, r1, r2, r3, m0, m1, m2, m3, H * K, o_k, m_k)
        if KDA:
            G0, G1, G2, G3, _, _, _, c4 = _gate_piece(g, r0, r1, r2, r3, m0, m1, m2, m3,
                                                      o_k, m_k, HV * K)
            tl.store(glast + o_k, tl.exp(c4), mask=m_k)
            _store2d(kd, x0 * rk0[:, None] * tl.exp(c4[None, :] - G0), r0, m0, HV * K, o_k, m_k)
            _store2d(kd, x1 * rk1[:, None] * tl.exp(c4[None, :] - G1), r1, m1, HV * K, o_k, m_k)
            _store2d(kd, x2 * rk2[:, None] * tl.exp(c4[None, :] - G2), r2, m2, HV * K, o_k, m_k)
            _store2d(kd, x3 * rk3[:, None] * tl.exp(c4[None, :] - G3), r3, m3, HV * K, o_k, m_k)
            e0, e1, e2, e3 = tl.exp(G0), tl.exp(G1), tl.exp(G2), tl.exp(G3)
            y = _rows2d(q, r0, m0, H * K, o_k, m_k).to(tl.float32)
            _store2d(qg, y * rq0[:, None] * e0, r0, m0, HV * K, o_k, m_k)
            y = _rows2d(q, r1, m1, H * K, o_k, m_k).to(tl.float32)
            _store2d(qg, y * rq1[:, None] * e1, r1, m1, HV * K, o_k, m_k)
            y = _rows2d(q, r2, m2, H * K, o_k, m_k).to(tl.float32)
            _store2d(qg, y * rq2[:, None] * e2, r2, m2, HV * K, o_k, m_k)
            y = _rows2d(q, r3, m3, H * K, o_k, m_k).to(tl.float32)
            _store2d(qg, y * rq3[:, None] * e3, r3, m3, HV * K, o_k, m_k)
            x0, x1 = x0 * (b0 * rk0)[:, None] * e0, x1 * (b1 * rk1)[:, None] * e1
            x2, x3 = x2 * (b2 * rk2)[:, None] * e2, x3 * (b3 * rk3)[:, None] * e3
        else:
            x0, x1, x2, x3 = x0 * s0[:, None], x1 * s1[:, None], x2 * s2[:, None], x3 * s3[:, None]
        _store_wy(w, x0, x1, x2, x3, A00, A10, A11, A20, A21, A22, A30, A31, A32, A33,
                  r0, r1, r2, r3, m0, m1, m2, m3, HV * K, o_k, m_k, PREC)

    # ---- 4. U = A·(β v), V piece by piece
    for iv in tl.static_range(NVC):
        o_v = iv * BVC + tl.arange(0, BVC)
        m_v = o_v < V
        y0, y1, y2, y3 = _rows4(v, r0, r1, r2, r3, m0, m1, m2, m3, HV * V, o_v, m_v)
        y0, y1, y2, y3 = y0 * b0[:, None], y1 * b1[:, None], y2 * b2[:, None], y3 * b3[:, None]
        _store_wy(u, y0, y1, y2, y3, A00, A10, A11, A20, A21, A22, A30, A31, A32, A33,
                  r0, r1, r2, r3, m0, m1, m2, m3, HV * V, o_v, m_v, PREC)


@triton.jit
def _store_wy(out, x0, x1, x2, x3, A00, A10, A11, A20, A21, A22, A30, A31, A32, A33,
              r0, r1, r2, r3, m0, m1, m2, m3, stride, cols, m_cols, PREC: tl.constexpr):
    """Store the four 16-row blocks of A·X (A block lower triangular, X [64, piece] fp32)."""
    _store2d(out, tl.dot(A00, x0, input_precision=PREC), r0, m0, stride, cols, m_cols)
    y = tl.dot(A10, x0, input_precision=PREC)
    _store2d(out, tl.dot(A11, x1, y, input_precision=PREC), r1, m1, stride, cols, m_cols)
    y = tl.dot(A20, x0, input_precision=PREC)
    y = tl.dot(A21, x1, y, input_precision=PREC)
    _store2d(out, tl.dot(A22, x2, y, input_precision=PREC), r2, m2, stride, cols, m_cols)
    y = tl.dot(A30, x0, input_precision=PREC)
    y = tl.dot(A31, x1, y, input_precision=PREC)
    y = tl.dot(A32, x2, y, input_precision=PREC)
    _store2d(out, tl.dot(A33, x3, y, input_precision=PREC), r3, m3, stride, cols, m_cols)
