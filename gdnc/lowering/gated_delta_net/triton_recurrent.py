"""Triton recurrent GatedDeltaNet kernel (SPEC §2.1): one program per (sequence, value head,
V-block), the state tile in registers for the whole sequence.

The tile is ``[BK, BV]`` (pool layout "kv", [P, HV, K, V]) or ``[BV, BK]`` ("vk",
[P, HV, V, K]: every row of the tile is K contiguous elements, so the whole tile of a
V-block is one contiguous run of memory). It is read once from ``state_src[in_index[n]]``
(negative index: zeros), updated token by token in fp32 and written once to
``state_dst[out_index[n]]`` (negative index: skipped). Every offset is computed in int64.

``run(launch)`` does no host synchronisation and allocates nothing, so it can be captured
in a CUDA graph; ``DecodeGraph`` does exactly that for fixed-batch single-token decode.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
import triton
import triton.language as tl

from gdnc.lowering.gated_delta_net.checks import GdnShapes
from gdnc.lowering.gated_delta_net.launch import GdnLaunch, GdnOptions
from gdnc.lowering.gated_delta_net.triton_program import L2NORM_EPS, sequence_program


@triton.jit
def _load_token(p_q, p_k, p_v, p_g, p_b, o_k, o_v, K: tl.constexpr, V: tl.constexpr, left):
    """One token's q, k, gate [BK] and v, beta [BV] (gate and beta broadcast along the
    vector unless the gate is per key), in their own dtypes; zeros when ``left`` <= 0."""
    mask_k = (o_k < K) & (o_k * 0 < left)
    mask_v = (o_v < V) & (o_v * 0 < left)
    return (tl.load(p_q, mask=mask_k, other=0), tl.load(p_k, mask=mask_k, other=0),
            tl.load(p_v, mask=mask_v, other=0), tl.load(p_g, mask=mask_k, other=0),
            tl.load(p_b, mask=mask_v, other=0))


@triton.jit
def _recurrent_kernel(
    q, k, v, g, beta, o,  # [T, H, K] x2, [T, HV, V], [T, HV] or [T, HV, K], [T, HV], [T, HV, V]
    src, dst, ts,  # pools [P, HV, K, V] / [P, HV, V, K]; token states [T, HV, ...] or None
    starts, lengths, in_index, out_index,  # int64 [N]
    scale,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    INTERLEAVE: tl.constexpr, KDA: tl.constexpr, L2NORM: tl.constexpr, VK: tl.constexpr,
):
    i_v, i_hv, i_h, i_n, start, length, slot_in, slot_out = sequence_program(
        starts, lengths, in_index, out_index, H, HV, V, BV, INTERLEAVE)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    mask_k = o_k < K
    mask_v = o_v < V
    if VK:
        offs = o_v[:, None] * K + o_k[None, :]
        mask = mask_v[:, None] & mask_k[None, :]
        h = tl.zeros([BV, BK], dtype=tl.float32)
    else:
        offs = o_k[:, None] * V + o_v[None, :]
        mask = mask_k[:, None] & mask_v[None, :]
        h = tl.zeros([BK, BV], dtype=tl.float32)
    head = i_hv * (K * V)
    if slot_in >= 0:
        h = tl.load(src + slot_in * (HV * K * V) + head + offs, mask=mask, other=0).to(tl.float32)

    p_q = q + (start * H + i_h) * K + o_k
    p_k = k + (start * H + i_h) * K + o_k
    p_v = v + (start * HV + i_hv) * V + o_v
    p_o = o + (start * HV + i_hv) * V + o_v
    p_b = beta + start * HV + i_hv + o_v * 0
    if KDA:
        p_g = g + (start * HV + i_hv) * K + o_k
    else:
        p_g = g + start * HV + i_hv + o_k * 0
    if ts is not None:
        p_ts = ts + start * (HV * K * V) + head + offs
    # the next token's inputs are loaded while the current one is computed
    n_q, n_k, n_v, n_g, n_b = _load_token(p_q, p_k, p_v, p_g, p_b, o_k, o_v, K, V, length)
    for t in range(0, length):
        b_q, b_k, b_v = n_q.to(tl.float32), n_k.to(tl.float32), n_v.to(tl.float32)
        b_a, b_beta = tl.exp(n_g.to(tl.float32)), n_b.to(tl.float32)
        p_q += H * K
        p_k += H * K
        p_v += HV * V
        p_b += HV
        p_g += HV * K if KDA else HV
        n_q, n_k, n_v, n_g, n_b = _load_token(p_q, p_k, p_v, p_g, p_b, o_k, o_v, K, V,
                                              length - t - 1)
        if L2NORM:
            b_q = b_q / tl.sqrt(tl.sum(b_q * b_q) + L2NORM_EPS)
            b_k = b_k / tl.sqrt(tl.sum(b_k * b_k) + L2NORM_EPS)
        b_q = b_q * scale
        if VK:
            h = h * b_a[None, :]
            b_d = b_beta * (b_v - tl.sum(h * b_k[None, :], 1))
            h = h + b_d[:, None] * b_k[None, :]
            b_o = tl.sum(h * b_q[None, :], 1)
        else:
            h = h * b_a[:, None]
            b_d = b_beta * (b_v - tl.sum(h * b_k[:, None], 0))
            h = h + b_k[:, None] * b_d[None, :]
            b_o = tl.sum(h * b_q[:, None], 0)
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=mask_v)
        p_o += HV * V
        if ts is not None:
            tl.store(p_ts, h.to(p_ts.dtype.element_ty), mask=mask)
            p_ts += HV * K * V
    if slot_out >= 0:
        tl.store(dst + slot_out * (HV * K * V) + head + offs, h.to(dst.dtype.element_ty), mask=mask)


@functools.cache
def blocks(V: int, vk: bool, wide_decode: bool) -> tuple[int, int]:
    """(BV, num_warps) for value dim V, the pool layout and whether the launch is single-token
    decode over >= 512 (sequence, value head) pairs. Measured on an H100 at K = V = 128
    (`bench_gpu.py --sweep`; table in benchmarks/RESULTS_gpu.md of commit 8bf178e): "vk"
    takes [8, K] tiles on one warp (8 contiguous rows); "kv" takes [K, 16] tiles on one warp,
    or [K, 64] on 4 warps for wide decode."""
    bv, warps = (8, 1) if vk else (64, 4) if wide_decode else (16, 1)
    return min(bv, triton.next_power_of_2(V)), warps


_COMPILED: dict[tuple, Any] = {}  # specialisation -> compiled kernel: skips Triton's binder


def launch_kernel(launch: GdnLaunch, bv: int, num_warps: int) -> None:
    """Launch the kernel over ``launch`` with V-block ``bv`` and ``num_warps`` per program
    (``run`` picks them; exposed for tuning sweeps)."""
    shp, opts = launch.shapes, launch.opts
    n = launch.starts.shape[0]
    if n == 0:
        return
    dst, ts = launch.state_dst, launch.token_states
    if not dst.is_contiguous() or (ts is not None and not ts.is_contiguous()):
        _run_on_contiguous_copies(launch, bv, num_warps)
        return
    src = launch.state_src if launch.state_src is dst else launch.state_src.contiguous()
    tensors = (launch.q.contiguous(), launch.k.contiguous(), launch.v.contiguous(),
               launch.g.contiguous(), launch.beta.contiguous(), launch.o, src, dst, ts)
    consts = (shp.H, shp.HV, shp.K, shp.V, triton.next_power_of_2(shp.K), bv,
              opts.head_map == "interleave", shp.kda, opts.qk_l2norm, opts.state_layout == "vk")
    args = (*tensors, launch.starts, launch.lengths, launch.in_index, launch.out_index,
            opts.scale, *consts)
    grid = (n * shp.HV * triton.cdiv(shp.V, bv), 1, 1)  # a compiled kernel takes 3 dims
    # Triton specialises pointers on dtype and 16-byte alignment: a kernel compiled for
    # all-aligned arguments of these dtypes serves every later all-aligned call
    key = (dst.device.index, num_warps, consts, *(t.dtype for t in tensors if t is not None),
           ts is None)
    aligned = all(t.data_ptr() % 16 == 0 for t in args[:13] if t is not None)
    kernel = _COMPILED.get(key) if aligned else None
    if kernel is not None:
        kernel[grid](*args)
        return
    kernel = _recurrent_kernel[grid](*args, num_warps=num_warps)
    if aligned and kernel is not None:  # None under TRITON_INTERPRET
        _COMPILED[key] = kernel


def _run_on_contiguous_copies(launch: GdnLaunch, bv: int, num_warps: int) -> None:
    """Strided pool or token_states: run on contiguous copies and copy the results back."""
    dst = launch.state_dst.contiguous()
    src = dst if launch.state_src is launch.state_dst else launch.state_src
    ts = launch.token_states
    ts_copy = ts.contiguous() if ts is not None else None
    launch_kernel(dataclasses.replace(launch, state_src=src, state_dst=dst, token_states=ts_copy),
                  bv, num_warps)
    launch.state_dst.copy_(dst)
    if ts is not None and ts_copy is not None:
        ts.copy_(ts_copy)


def run(launch: GdnLaunch) -> None:
    """Recurrent GatedDeltaNet over the sequences of ``launch`` (contract: ``launch.py``)."""
    shp = launch.shapes
    wide_decode = launch.max_len == 1 and launch.starts.shape[0] * shp.HV >= 512
    launch_kernel(launch, *blocks(shp.V, launch.opts.state_layout == "vk", wide_decode))


class DecodeGraph:
    """Single-token decode of a fixed batch of B sequences, replayed from a CUDA graph.

    Static inputs, written in place by the caller before each ``replay()``: ``q``, ``k``
    [B, H, K], ``v`` [B, HV, V], ``g`` [B, HV] (or [B, HV, K] with ``kda``), ``beta`` [B, HV],
    ``slots`` int64 [B] (pool slot of each sequence, read and written in place; distinct);
    output ``o`` [B, HV, V]; inputs and ``o`` have ``dtype``. ``pool`` [P, HV, K, V] ("kv") /
    [P, HV, V, K] ("vk"), on a CUDA device, is updated in place. One replay costs a few
    microseconds of host time against tens for an eager call.
    """

    def __init__(self, pool: torch.Tensor, batch: int, heads: int, opts: GdnOptions, *,
                 dtype: torch.dtype = torch.float32, kda: bool = False) -> None:
        P, HV, K, V = pool.shape
        if opts.state_layout == "vk":
            K, V = V, K
        dev = pool.device

        def new(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=dev)

        self.q, self.k, self.v = new(batch, heads, K), new(batch, heads, K), new(batch, HV, V)
        self.g = new(batch, HV, K) if kda else new(batch, HV)
        self.beta, self.o = new(batch, HV), new(batch, HV, V)
        self.slots = torch.arange(batch, dtype=torch.int64, device=dev)
        self._launch = GdnLaunch(
            q=self.q, k=self.k, v=self.v, g=self.g, beta=self.beta, o=self.o, state_src=pool,
            state_dst=pool, starts=self.slots.clone(), lengths=torch.ones_like(self.slots),
            in_index=self.slots, out_index=self.slots, token_states=None,
            shapes=GdnShapes(T_total=batch, N=batch, P=P, H=heads, HV=HV, K=K, V=V, kda=kda),
            opts=opts, max_len=1,
        )
        run(self._launch)  # compile outside the capture; zero inputs leave the pool unchanged
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            run(self._launch)

    def replay(self) -> torch.Tensor:
        """Run one decode step on the static inputs; returns ``o`` (the static output)."""
        self.graph.replay()
        return self.o
