"""CPU GatedDeltaNet kernels (SPEC §2.1): vectorised torch, every sequence and head batched.

Both kernels follow the launch contract of ``launch.py``. They sort the launch's sequences
longest first (stable), so the sequences still running at a time step (recurrent) or chunk
(chunked) are a prefix of the batch; gather the inputs into a padded fp32 layout with one
index per tensor (value heads mapped to their key heads; steps past a sequence's end are
zero rows, so no value of one sequence enters another's chunk); loop over time steps or chunks
with batched matmuls over sequences x heads (torch's intra-op threads); scatter o and token
states back; and write the final states into ``state_dst``.

States are fp32 while they evolve. The recurrent kernel keeps them in the pool's layout, the
chunked one in "kv". When the pool is fp32 and both source and destination, the layouts
agree and the launch's (sorted) slots are consecutive with read = written (the functional
form; a batch in slots 0..B-1), the kernels update the pool slots in place; otherwise they
work in a cached per-thread buffer (a fresh large allocation page-faults on every call).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

from gdnc.lowering.gated_delta_net.launch import GdnLaunch
from gdnc.opset.gated_delta_net import L2NORM_EPS

CHUNK = 32  # chunk length of the chunked kernel (GDA)
KDA_CHUNK = 16  # KDA: exact per-key pairwise decays cost [C, C, K] per chunk and head
# Inputs are gathered and chunk terms computed per segment of time: at most this many
# (chunk x head) / (step x head) rows, so that no temporary reaches the sizes that are
# mmap-allocated and page-faulted afresh on every call (>= 32 MiB with glibc)
CHUNK_ROWS = 128
STEP_ROWS = 8192
F32 = torch.float32

_WORK = threading.local()


def _workspace(numel: int) -> torch.Tensor:
    """A cached fp32 buffer of ``numel`` elements, one per thread (reused across calls).

    Made outside inference mode, so that calls in and out of ``torch.inference_mode`` (the
    runtime's executor, a plain caller) can both write it."""
    buf = getattr(_WORK, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):
            buf = torch.empty(numel, dtype=F32)
        _WORK.buf = buf
    return buf[:numel]


@dataclass
class _Plan:
    """The launch's sequences sorted longest first.

    ``lens`` host lengths (descending); ``starts`` [N] their first tokens, ``first`` the first
    one; ``in_order`` when their tokens are the packed ones from ``first`` on, in order (one
    sequence without padding, or a decode batch of consecutive single tokens); ``ins``/``outs``
    [N] the sorted in/out slots; ``key_head`` [HV] each value head's key head (None: H == HV);
    ``padded_len`` T, ``last_token`` T_total - 1.
    """

    lens: list[int]
    starts: torch.Tensor
    first: int
    in_order: bool
    ins: torch.Tensor
    outs: torch.Tensor
    key_head: torch.Tensor | None
    padded_len: int
    last_token: int

    @cached_property
    def tok(self) -> torch.Tensor:
        """[N, T] token index of step t of sorted sequence n; past its end its own last token
        (only ever an index: ``_rows`` gives padding steps zeros)."""
        steps = torch.arange(self.padded_len, dtype=torch.int64)
        last = (torch.tensor(self.lens) - 1).clamp_(min=0)
        return (self.starts[:, None] + torch.minimum(steps, last[:, None])).clamp_(
            max=max(self.last_token, 0))

    @cached_property
    def valid(self) -> torch.Tensor:
        """[N, T] t < lens[n]."""
        return torch.arange(self.padded_len) < torch.tensor(self.lens)[:, None]


def _plan(launch: GdnLaunch, padded_len: int) -> _Plan:
    shp, lengths, starts = launch.shapes, launch.lengths, launch.starts
    lens, ins, outs = lengths.tolist(), launch.in_index, launch.out_index
    if any(a < b for a, b in zip(lens, lens[1:])):
        sorted_lens, order = torch.sort(lengths, descending=True, stable=True)
        lens, starts, ins, outs = sorted_lens.tolist(), starts[order], ins[order], outs[order]
    first = int(starts[0])
    in_order = (len(lens) == 1 and lens[0] == padded_len) or (
        lens[0] == 1 and lens[-1] == 1 and padded_len == 1
        and starts.tolist() == list(range(first, first + len(lens))))
    key_head = None
    if shp.group > 1:
        heads = torch.arange(shp.HV)
        key_head = heads // shp.group if launch.opts.head_map == "interleave" else heads % shp.H
    return _Plan(lens, starts, first, in_order, ins, outs, key_head, padded_len, shp.T_total - 1)


def _segments(lens: list[int], blocks: int, per: int, group: int):
    """Groups of ``group`` blocks of ``per`` steps: yields (j0, j1, running), blocks j0:j1 and
    how many sorted sequences still run in each of them (non-increasing)."""
    running = [sum(n > j * per for n in lens) for j in range(blocks)]
    for j0 in range(0, blocks, group):
        yield j0, min(j0 + group, blocks), running[j0:j0 + group]


def _rows(x: torch.Tensor, p: _Plan, t0: int, t1: int, n: int) -> torch.Tensor:
    """x [T_total, heads, *D] -> fp32 [n, t1 - t0, heads, *D]: steps t0:t1 of the first n
    sorted sequences (a view of x when they are consecutive packed tokens).

    Steps past a sequence's end are zeros written over the gathered rows (never another
    sequence's values times 0: NaN * 0 is NaN): no update (beta 0), no decay (g 0), zero
    q, k and v; a sequence's terms never read another sequence's tokens."""
    T = t1 - t0
    if p.in_order or (n == 1 and t1 <= p.lens[0]):
        rows = x[p.first + t0:p.first + t0 + n * T]
    else:
        rows = x.index_select(0, p.tok[:n, t0:t1].flatten())
        if p.lens[n - 1] < t1:  # sorted longest first: the last ones end before t1
            pad = (~p.valid[:n, t0:t1]).flatten().nonzero().squeeze(1)
            rows.view(n * T, -1).index_fill_(0, pad, 0.0)  # writes the padding rows alone
    return rows.float().view(n, T, *x.shape[1:])


def _arrange(x: torch.Tensor, C: int) -> torch.Tensor:
    """[n, T, heads, *D] -> [T, n*heads, *D] (C = 0) or [T/C, n*heads, C, *D] (chunks of C)."""
    if C:
        x = x.unflatten(1, (-1, C)).permute(1, 0, 3, 2, *range(4, x.dim() + 1))
    else:
        x = x.transpose(0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _kq(launch: GdnLaunch, p: _Plan, t0: int, t1: int, n: int, C: int = 0) -> torch.Tensor:
    """k and scale * q of steps t0:t1 per value head, fp32, l2-normalised when asked:
    [T, n*HV, 2, K], or in chunks of C [T/C, n*HV, 2C, K] (a chunk's k rows, then q rows)."""
    T, HV, K = t1 - t0, launch.shapes.HV, launch.shapes.K
    kq = torch.empty((T // C, n, HV, 2, C, K) if C else (T, n, HV, 2, K))
    for i, (x, scale) in enumerate(((launch.k, 1.0), (launch.q, launch.opts.scale))):
        rows = _rows(x, p, t0, t1, n)  # [n, T, H, K]
        if p.key_head is not None:
            rows = rows.index_select(2, p.key_head)
        rows = rows.unflatten(1, (-1, C)).permute(1, 0, 3, 2, 4) if C else rows.transpose(0, 1)
        factor: float | torch.Tensor = scale
        if launch.opts.qk_l2norm:
            factor = (rows * rows).sum(-1, keepdim=True).add_(L2NORM_EPS).rsqrt_().mul_(scale)
        torch.mul(rows, factor, out=kq.select(3, i))
    return kq.flatten(1, 2).flatten(2, -2)


def _scatter(dst: torch.Tensor, index: tuple[torch.Tensor, ...], mask: torch.Tensor,
             values: torch.Tensor) -> None:
    """dst[token, head] = values at the valid positions (``mask`` broadcast to the index)."""
    mask = mask.expand_as(index[0])
    if not bool(mask.all()):
        index, values = tuple(i[mask] for i in index), values[mask]
    dst.index_put_(index, values.to(dst.dtype))


def _heads(launch: GdnLaunch, shape: list[int]) -> torch.Tensor:
    return torch.arange(launch.shapes.HV).view(shape)


def _load_states(launch: GdnLaunch, p: _Plan, transpose: bool) -> tuple[torch.Tensor, bool]:
    """The initial states [N*HV, a, b] fp32 in the pool's layout (transpose: the other one),
    zeros for negative in slots; True when they are the pool's own slots, updated in place."""
    src, dst, N, HV = launch.state_src, launch.state_dst, len(p.lens), launch.shapes.HV
    ins = p.ins.tolist()
    if (not transpose and src is dst and dst.dtype == F32 and dst.is_contiguous()
            and ins == p.outs.tolist() and ins == list(range(ins[0], ins[0] + N)) and ins[0] >= 0):
        return dst.narrow(0, ins[0], N).view(N * HV, *dst.shape[2:]), True
    dims = src.shape[2:][::-1] if transpose else src.shape[2:]
    buf = _workspace(N * HV * dims.numel()).view(N, HV, *dims)
    slots = p.ins.clamp(min=0)
    if transpose or src.dtype != F32:
        sel = src.index_select(0, slots)
        buf.copy_(sel.mT if transpose else sel)
    else:
        torch.index_select(src, 0, slots, out=buf)
    if min(ins) < 0:
        buf.masked_fill_((p.ins < 0).view(N, 1, 1, 1), 0.0)
    return buf.view(N * HV, *dims), False


def _store_states(launch: GdnLaunch, p: _Plan, S: torch.Tensor, transpose: bool) -> None:
    """state_dst[outs[n]] = final state n for outs[n] >= 0 (S [N*HV, a, b], see _load_states)."""
    dst, outs = launch.state_dst, p.outs
    final = S.view(len(p.lens), launch.shapes.HV, *S.shape[1:])
    if transpose:
        final = final.mT
    keep = outs >= 0
    if not bool(keep.all()):
        final, outs = final[keep], outs[keep]
    dst.index_copy_(0, outs, final.to(dst.dtype))


def run_recurrent(launch: GdnLaunch) -> None:
    """Token-by-token recurrence; a step is five batched ops over the running sequences.

    With a the decay and q pre-scaled: [u; o0] = S_old^T [a k; a q] (one bmm), δ = β v - β u,
    o = o0 + (q.k) δ, S = a S_old + k δ^T (in place: mul_, addcmul_).
    """
    N, shp = launch.num_seqs, launch.shapes
    T, HV, NH, kv = launch.max_len, shp.HV, N * shp.HV, launch.opts.state_layout == "kv"
    if N == 0:
        return
    p = _plan(launch, T)
    S, in_place = _load_states(launch, p, transpose=False)
    ts = launch.token_states
    for t0, t1, running in _segments(p.lens, T, 1, max(1, STEP_ROWS // NH)):
        n0, Ts = running[0], t1 - t0
        c0 = n0 * HV
        kq = _kq(launch, p, t0, t1, n0)  # [Ts, c0, 2, K]
        qdotk = torch.linalg.vecdot(kq[:, :, 0], kq[:, :, 1])[..., None]  # [Ts, c0, 1]
        a = torch.exp(_arrange(_rows(launch.g, p, t0, t1, n0), 0)).view(Ts, c0, -1, 1)
        kqa = kq * a.mT  # a k, a q (a [Ts, c0, 1 or K, 1])
        decay = a if kv else a.mT  # over S [K, V] / [V, K]
        beta = _arrange(_rows(launch.beta, p, t0, t1, n0), 0)[..., None]
        bv = _arrange(_rows(launch.v, p, t0, t1, n0), 0) * beta
        rows = slice(p.first + t0, p.first + t0 + n0 * Ts)  # the tokens, when in order
        direct = p.in_order and launch.o.dtype == F32
        O = launch.o[rows].view(Ts, c0, -1) if direct else torch.empty(Ts, c0, shp.V)
        for i, n in enumerate(running):
            c = n * HV
            St, k = S[:c], kq[i, :c, 0]
            if kv:
                uo = torch.bmm(kqa[i, :c], St)  # [c, 2, V]
                u, o0 = uo[:, 0], uo[:, 1]
            else:
                uo = torch.bmm(St, kqa[i, :c].mT)  # [c, V, 2]
                u, o0 = uo[..., 0], uo[..., 1]
            d = torch.addcmul(bv[i, :c], beta[i, :c], u, value=-1.0)
            torch.addcmul(o0, qdotk[i, :c], d, out=O[i, :c])
            St.mul_(decay[i, :c])
            if kv:
                St.addcmul_(k[:, :, None], d[:, None, :])
            else:
                St.addcmul_(d[:, :, None], k[:, None, :])
            if ts is not None:
                ts.index_copy_(0, p.tok[:n, t0 + i], St.view(n, HV, *St.shape[1:]).to(ts.dtype))
        if not p.in_order:
            index = torch.broadcast_tensors(p.tok[:n0, t0:t1].t()[:, :, None],
                                            _heads(launch, [1, 1, HV]))
            _scatter(launch.o, index, p.valid[:n0, t0:t1].t()[:, :, None],
                     O.view(Ts, n0, HV, -1))
        elif not direct:
            launch.o[rows].view(Ts, c0, -1).copy_(O)
    if not in_place:
        _store_states(launch, p, S, transpose=False)


class _Terms(NamedTuple):
    """Chunk-local terms of chunks [*B, C, .] (q pre-scaled; S [K, V] the chunk's first state).

    [W S; Qd S] = WQ S (WQ [*B, 2C, K]), Δ = U - W S (U [*B, C, V]), o = Qd S + P Δ (P
    [*B, C, C]), last state decay * S + Kd^T Δ (Kd [*B, C, K], decay [*B, Kg, 1]). With γ the
    decay's cumulative log in the chunk, gamma = exp(γ_t) [*B, C, Kg] and D = exp(γ_t - γ_i)
    for i <= t, else 0 [*B, C, C, Kg] serve token states. Kg = 1 (GDA) or K (KDA).
    """

    WQ: torch.Tensor
    U: torch.Tensor
    P: torch.Tensor
    Kd: torch.Tensor
    decay: torch.Tensor
    gamma: torch.Tensor
    D: torch.Tensor


def _local(kq: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> _Terms:
    """Terms of chunks kq [*B, 2C, K] (k rows, then q rows), v [*B, C, V], g [*B, C] or
    [*B, C, K], beta [*B, C].

    The deltas solve (I + L) Δ = diag(β) V - diag(β Γ) K S with L[t, i] = β_t Σ_d k_t[d] k_i[d]
    exp(γ_t[d] - γ_i[d]) for i < t, so W, U = A (β Γ K), A (β V) with A = (I + L)^-1. Decay
    ratios are exponentials of differences of fp64 cumulative logs (never a quotient of
    exponentials, which overflows under strong decay).
    """
    kda, C = g.dim() == kq.dim(), v.shape[-2]
    k, q = kq[..., :C, :], kq[..., C:, :]
    gc = g.double().cumsum(-2) if kda else g.double().cumsum(-1)[..., None]  # [*B, C, Kg]
    causal = torch.ones(C, C, dtype=torch.bool).tril_()[..., None]
    D = (gc[..., :, None, :] - gc[..., None, :, :]).float().masked_fill_(~causal, -torch.inf)
    D = D.exp_()
    last = gc[..., -1:, :]
    gamma = gc.exp().float()
    if kda:  # [t, i, d] products, contracted with (k_t, q_t) over d
        LP = torch.matmul(D * k.unsqueeze(-3), torch.stack((k, q), -1)).movedim(-1, -3)
    else:
        LP = (kq @ k.mT).unflatten(-2, (2, C)).mul_(D[..., None, :, :, 0])
    L, P = LP.unbind(-3)  # [*B, C, C]: k_t.k_i and q_t.k_i, decayed
    eye = torch.eye(C).expand(L.shape)
    A = torch.linalg.solve_triangular(L * beta[..., None], eye, upper=False, unitriangular=True)
    K = k.shape[-1]
    rhs = torch.empty(*v.shape[:-1], K + v.shape[-1])
    torch.mul(k, gamma * beta[..., None], out=rhs[..., :K])
    torch.mul(v, beta[..., None], out=rhs[..., K:])
    WU = A @ rhs  # [W | U]
    WQ = torch.cat((WU[..., :K], q * gamma), -2)
    Kd = k * (last - gc).exp().float()
    return _Terms(WQ, WU[..., K:], P, Kd, last.exp().float().mT, gamma, D)


def _token_states(token_states: torch.Tensor, layout: str, index: tuple[torch.Tensor, ...],
                  mask: torch.Tensor, tm: _Terms, k: torch.Tensor, S0: torch.Tensor,
                  delta: torch.Tensor) -> None:
    """Write the state after every token of a chunk: S_t = Γ_t S0 + Σ_{i<=t} D[t, i] k_i δ_i^T.

    k [c, C, K], S0 [c, K, V], delta [c, C, V] (c = running sequences x HV); index, mask
    [n, HV, C] (token, value head) of each row.
    """
    E = (tm.D * k.unsqueeze(-3)).permute(0, 3, 1, 2)  # [c, K, C(t), C(i)]
    states = torch.matmul(E, delta[:, None]).transpose(1, 2)  # [c, C, K, V]
    states = states.addcmul_(tm.gamma[..., None], S0[:, None])
    if layout == "vk":
        states = states.mT
    _scatter(token_states, index, mask, states.unflatten(0, (index[0].shape[0], -1)))


def run_chunked(launch: GdnLaunch) -> None:
    """Chunked WY form (chunks of CHUNK tokens, KDA_CHUNK for per-key gates).

    Per segment of chunks (CHUNK_ROWS chunks x heads; one chunk for KDA) the chunks' local
    terms are computed at once (batched matmuls), then a loop over the segment's chunks
    carries the states of all running sequences x heads: Δ = U - W S, o = Qd S + P Δ,
    S = decay * S + Kd^T Δ.
    """
    N, shp = launch.num_seqs, launch.shapes
    if N == 0:
        return
    C = KDA_CHUNK if shp.kda else CHUNK
    nC, HV = -(-launch.max_len // C), shp.HV
    p = _plan(launch, nC * C)
    transpose = launch.opts.state_layout == "vk"
    S, in_place = _load_states(launch, p, transpose)  # [N*HV, K, V]
    vhead = _heads(launch, [1, 1, HV, 1])
    group = 1 if shp.kda else max(1, CHUNK_ROWS // (N * HV))
    for j0, j1, running in _segments(p.lens, nC, C, group):
        n0, t0, t1 = running[0], j0 * C, j1 * C
        kq = _kq(launch, p, t0, t1, n0, C)  # [G, c0, 2C, K]
        v, g, beta = (_arrange(_rows(x, p, t0, t1, n0), C)
                      for x in (launch.v, launch.g, launch.beta))
        valid = p.valid[:n0, t0:t1].view(n0, -1, C).transpose(0, 1)[:, :, None]  # [G,n0,1,C]
        terms = _local(kq, v, g, beta)  # padding rows are zeros: no update, no decay
        O = torch.empty(j1 - j0, n0 * HV, C, shp.V)
        for i, n in enumerate(running):
            c = n * HV
            tm = _Terms(*(x[i, :c] for x in terms))
            S0 = S[:c]
            ws_qs = torch.bmm(tm.WQ, S0)  # [c, 2C, V]
            delta = torch.sub(tm.U, ws_qs[:, :C])
            torch.baddbmm(ws_qs[:, C:], tm.P, delta, out=O[i, :c])
            if launch.token_states is not None:
                tok = p.tok[:n, t0 + i * C:t0 + (i + 1) * C, None]
                _token_states(launch.token_states, launch.opts.state_layout,
                              torch.broadcast_tensors(tok.transpose(1, 2), vhead[0]),
                              valid[i, :n], tm, kq[i, :c, :C], S0, delta)
            S0.mul_(tm.decay).baddbmm_(tm.Kd.mT, delta)
        if N == 1 and t1 <= p.lens[0]:  # consecutive tokens
            launch.o[p.first + t0:p.first + t1].view(-1, C, HV, shp.V).copy_(O.transpose(1, 2))
        else:
            tok = p.tok[:n0, t0:t1].view(n0, -1, C).transpose(0, 1)[:, :, None]
            _scatter(launch.o, torch.broadcast_tensors(tok, vhead), valid,
                     O.unflatten(1, (n0, HV)))
    if not in_place:
        _store_states(launch, p, S, transpose)
