"""GPU benchmarks of gdnc's Triton GatedDeltaNet kernels against fla 0.6.0, side by side.

Shapes: H=16 key heads, HV=32 value heads, K=V=128, bf16 q/k/v, fp32 g/beta, fp32 state,
q/k l2-norm in the kernel. Sections (default: --check --decode):
  --check      spot checks the shared test does not reach: slot offsets past 2**31 elements,
               DecodeGraph, a strided pool, gdnc vs fla on the decode inputs
  --sweep      V-block / num_warps of the recurrent kernel, both pool layouts
  --decode     T=1 at B = 1..512: GPU time per call in a CUDA graph of many calls (% of copy
               bandwidth), eager wall time per call (host included), one-call graph replays
  --prefill    one sequence of T = 2K..32K tokens: gdnc chunked vs fla chunk
  --mixed      64 decodes + 4 prefills of 1024 tokens in one packed batch
  --breakeven  B=32 sequences of T tokens: recurrent vs chunked
Usage: PYTHONPATH=. python3 benchmarks/bench_gpu.py [sections] [--out DIR]; prints tables,
writes DIR/bench_gpu.json (DIR: $OUT, else the current directory).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from gdnc.atomic import write_text
from gdnc.lowering.gated_delta_net.api import gated_delta_net
from gdnc.lowering.gated_delta_net.backends import BACKENDS
from gdnc.lowering.gated_delta_net.checks import GdnShapes, validate
from gdnc.lowering.gated_delta_net.launch import GdnLaunch, GdnOptions
from gdnc.lowering.gated_delta_net.triton_recurrent import (
    _COMPILED,
    DecodeGraph,
    launch_kernel,
    run,
)

H, HV, K, V = 16, 32, 128, 128
SCALE = K**-0.5
STATE_BYTES = HV * K * V * 4
DEV = torch.device("cuda")
RESULTS: dict[str, object] = {}


def gpu_us(fn: Callable[[], object]) -> float:
    """Median GPU time of ``fn`` in µs (CUDA events; do_bench flushes L2 before each run)."""
    return do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e3


def wall_us(fn: Callable[[int], object], calls: int = 300) -> float:
    """Median over 5 rounds of the wall time per call of ``fn(i)``, host time included."""
    for i in range(20):
        fn(i)
    rounds = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def graph_of(fns: list[Callable[[], object]]) -> torch.cuda.CUDAGraph:
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    return graph


def graph_us(fns: list[Callable[[], object]]) -> float:
    """GPU time per call of a CUDA graph replaying all of ``fns``."""
    graph = graph_of(fns)
    return gpu_us(graph.replay) / len(fns)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, bytes read plus bytes written."""
    src = torch.randn(1 << 28, device=DEV)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / (gpu_us(lambda: dst.copy_(src)) * 1e-6)


def tokens(T: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random packed inputs of T tokens: q, k [T, H, K], v [T, HV, V] bf16; g, beta [T, HV]."""
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=DEV)

    q, k, v = (randn(T, n, d).bfloat16() for n, d in ((H, K), (H, K), (HV, V)))
    return q, k, v, F.logsigmoid(randn(T, HV) + 3), torch.sigmoid(randn(T, HV))


def make_launch(x: tuple[torch.Tensor, ...], o: torch.Tensor, pool: torch.Tensor,
                cu: list[int], slots: list[int], layout: str) -> GdnLaunch:
    """A launch over every sequence of ``cu``, in place in ``slots`` of ``pool``."""
    idx = torch.tensor(slots, device=DEV)
    cu_t = torch.tensor(cu, device=DEV)
    shp: GdnShapes = validate(*x, pool, cu_t, idx, idx, head_map="interleave",
                              state_layout=layout, token_states=None)
    return GdnLaunch(*x, o=o, state_src=pool, state_dst=pool, starts=cu_t[:-1].clone(),
                     lengths=cu_t.diff(), in_index=idx, out_index=idx, token_states=None,
                     shapes=shp, opts=GdnOptions(SCALE, True, "interleave", layout),
                     max_len=max(b - a for a, b in zip(cu, cu[1:])))


def fla_call(x: tuple[torch.Tensor, ...], h0: torch.Tensor, cu: torch.Tensor | None = None,
             chunk: bool = False, v_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """fla on packed inputs: batch layout [B, 1, ...] for decode, else cu_seqlens [1, T, ...]."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    fn = chunk_gated_delta_rule if chunk else fused_recurrent_gated_delta_rule
    q, k, v, g, beta = (t[None] if cu is not None else t[:, None] for t in x)
    return fn(q=q, k=k, v=v, g=g, beta=beta, scale=SCALE, initial_state=h0,
              output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu,
              state_v_first=v_first)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double().reshape(a.shape)
    return ((a - b).norm() / b.norm()).item()


def check(fla_ok: bool) -> None:
    gen = torch.Generator(DEV).manual_seed(1)
    errs = {}
    for layout in ("kv", "vk"):  # DecodeGraph vs the fp64 reference
        x = tokens(4, gen)
        pool = torch.randn(6, HV, K, V, device=DEV, generator=gen)
        dg = DecodeGraph(pool, 4, H, GdnOptions(SCALE, True, "interleave", layout),
                         dtype=torch.bfloat16)
        for buf, val in zip((dg.q, dg.k, dg.v, dg.g, dg.beta), x):
            buf.copy_(val)
        dg.slots.copy_(torch.tensor([5, 0, 3, 2]))
        ref = pool.clone()
        o_ref = gated_delta_net(*x, ref, torch.arange(5, device=DEV), dg.slots, scale=SCALE,
                                qk_l2norm=True, state_layout=layout, backend="reference")
        dg.replay()
        errs[f"decode_graph_{layout}"] = max(rel(dg.o, o_ref), rel(pool, ref))
    x = tokens(7, gen)  # slot offsets past 2**31 elements (bf16 pool of 4.3 GB)
    pool = torch.randn(4100, HV, K, V, device=DEV, generator=gen, dtype=torch.bfloat16)
    cu, ins, outs = (torch.tensor(t, device=DEV) for t in ([0, 3, 7], [4099, 17], [4098, 4097]))
    ref = pool[[4099, 17]].clone()
    ref_pool = torch.zeros(4, HV, K, V, device=DEV, dtype=torch.bfloat16)
    ref_pool[:2] = ref
    o_ref = gated_delta_net(*x, ref_pool, cu, torch.tensor([0, 1], device=DEV),
                            torch.tensor([2, 3], device=DEV), scale=SCALE, qk_l2norm=True,
                            backend="reference")
    o = gated_delta_net(*x, pool, cu, ins, outs, scale=SCALE, qk_l2norm=True, backend="triton",
                        algorithm="recurrent")
    errs["slot_4099"] = max(rel(o, o_ref), rel(pool[[4098, 4097]], ref_pool[2:]))
    del pool
    big = torch.randn(3, HV, K, 2 * V, device=DEV, generator=gen)  # strided pool
    x, ref = tokens(5, gen), big[..., :V].clone()
    cu = torch.tensor([0, 2, 5], device=DEV)
    o_ref = gated_delta_net(*x, ref, cu, scale=SCALE, backend="reference")
    o = gated_delta_net(*x, big[..., :V], cu, scale=SCALE, backend="triton", algorithm="recurrent")
    errs["strided_pool"] = max(rel(o, o_ref), rel(big[..., :V], ref))
    for layout in ("kv", "vk"):  # 40 decodes: the wide-decode blocks
        x, pool = tokens(40, gen), torch.randn(41, HV, K, V, device=DEV, generator=gen)
        ref, cu, slots = pool.clone(), torch.arange(41, device=DEV), torch.arange(1, 41, device=DEV)
        o_ref = gated_delta_net(*x, ref, cu, slots, scale=SCALE, qk_l2norm=True,
                                state_layout=layout, backend="reference")
        o = gated_delta_net(*x, pool, cu, slots, scale=SCALE, qk_l2norm=True, state_layout=layout,
                            backend="triton", algorithm="recurrent")
        errs[f"decode40_{layout}"] = max(rel(o, o_ref), rel(pool, ref))
    if fla_ok:  # same inputs, same function as fla
        x, pool = tokens(8, gen), torch.randn(8, HV, K, V, device=DEV, generator=gen)
        o_fla, h_fla = fla_call(x, pool.clone())
        o = gated_delta_net(*x, pool, torch.arange(9, device=DEV), scale=SCALE, qk_l2norm=True,
                            backend="triton", algorithm="recurrent")
        errs["vs_fla"] = max(rel(o, o_fla), rel(pool, h_fla))
    print("check (relative L2 error):", {k: f"{e:.1e}" for k, e in errs.items()})
    RESULTS["check"] = errs
    assert all(e < 1e-2 for e in errs.values()), errs


def decode_sets(B: int) -> int:
    """Input/state sets to rotate through so that one pass overflows L2 three times."""
    l2 = torch.cuda.get_device_properties(DEV).L2_cache_size
    return max(1, math.ceil(3 * l2 / (B * STATE_BYTES)))


def decode_setup(B: int, R: int, layout: str):
    gen = torch.Generator(DEV).manual_seed(B)
    xs = [tokens(B, gen) for _ in range(R)]
    outs = [torch.empty(B, HV, V, device=DEV, dtype=torch.bfloat16) for _ in range(R)]
    pool = torch.randn(R * B, HV, K, V, device=DEV, generator=gen)
    cu = list(range(B + 1))
    launches = [make_launch(xs[r], outs[r], pool, cu, list(range(r * B, (r + 1) * B)), layout)
                for r in range(R)]
    return xs, outs, pool, launches


def sweep() -> None:
    rows = []
    for B, T in ((1, 1), (16, 1), (32, 1), (512, 1), (32, 16)):
        R = decode_sets(B * T)
        for layout in ("kv", "vk"):
            launches = [packed_case([T] * B, layout)[-1] for _ in range(R)] if T > 1 \
                else decode_setup(B, R, layout)[3]
            for bv, warps in ((8, 1), (16, 1), (32, 2), (32, 4), (64, 4)):
                us = graph_us([functools.partial(launch_kernel, launches[r % R], bv, warps)
                               for r in range(max(R, 8))])
                rows.append(dict(B=B, T=T, layout=layout, bv=bv, warps=warps, us=us))
                print(f"sweep B={B:4d} T={T:3d} {layout} BV={bv:3d} warps={warps}: {us:8.2f} us")
            launches = None
            torch.cuda.empty_cache()
    RESULTS["sweep"] = rows


def decode_layout(B: int, layout: str, row: dict[str, float], fla_ok: bool) -> None:
    """Fill ``row`` with the decode timings of one batch size and pool layout."""
    R = decode_sets(B)
    n = max(R, 8)
    xs, outs, pool, launches = decode_setup(B, R, layout)
    row[f"gdnc_{layout}_graph"] = graph_us([lambda r=r: run(launches[r % R]) for r in range(n)])
    row[f"gdnc_{layout}_eager"] = wall_us(lambda i: run(launches[i % R]))
    # Triton's own launch path (the cache of compiled kernels emptied before every call)
    row[f"gdnc_{layout}_jit_eager"] = wall_us(lambda i: (_COMPILED.clear(), run(launches[i % R])))
    graphs = []
    for r in range(R):
        dg = DecodeGraph(pool, B, H, launches[r].opts, dtype=torch.bfloat16)
        for buf, val in zip((dg.q, dg.k, dg.v, dg.g, dg.beta), xs[r]):
            buf.copy_(val)
        dg.slots.copy_(launches[r].in_index)
        graphs.append(dg)
    row[f"gdnc_{layout}_replay1"] = wall_us(lambda i: graphs[i % R].replay())
    if layout == "kv":  # public API with index tensors on the GPU, then on the host
        for where, dev in (("api", DEV), ("api_host_idx", "cpu")):
            cu = torch.arange(B + 1, device=dev)
            slots = [launches[r].in_index.to(dev) for r in range(R)]
            row[f"gdnc_kv_{where}"] = wall_us(lambda i, cu=cu, slots=slots: gated_delta_net(
                *xs[i % R], pool, cu, slots[i % R], scale=SCALE, qk_l2norm=True,
                backend="triton", algorithm="recurrent", out=outs[i % R]))
    if fla_ok:
        fla = "fla" if layout == "kv" else "fla_vfirst"
        calls = [lambda r=r: fla_call(xs[r % R], pool[(r % R) * B:(r % R + 1) * B],
                                      v_first=layout == "vk") for r in range(n)]
        row[f"{fla}_graph"] = graph_us(calls)
        row[f"{fla}_eager"] = wall_us(lambda i: calls[i % R]())
        if layout == "kv":
            one = [graph_of([calls[r]]) for r in range(R)]
            row["fla_replay1"] = wall_us(lambda i: one[i % R].replay())


def decode(bw: float, fla_ok: bool) -> None:
    rows = []
    for B in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        floor = 2 * B * STATE_BYTES / bw * 1e6
        row: dict[str, float] = dict(B=B, floor_us=floor)
        for layout in ("kv", "vk"):
            decode_layout(B, layout, row, fla_ok)
            torch.cuda.empty_cache()
        for key in [k for k in row if k.endswith("_graph")]:
            row[key.replace("_graph", "_bw_pct")] = 100 * floor / row[key]
        rows.append(row)
        print("decode", {k: round(v, 2) for k, v in row.items()})
    RESULTS["decode"] = rows
    cols = [c for c in rows[0] if c != "B"]
    print("\nB    " + " ".join(f"{c[:16]:>16}" for c in cols))
    for row in rows:
        print(f"{row['B']:<4d} " + " ".join(f"{row.get(c, float('nan')):16.2f}" for c in cols))


def packed_case(lengths: list[int], layout: str = "kv"):
    gen = torch.Generator(DEV).manual_seed(sum(lengths))
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    x = tokens(cu[-1], gen)
    pool = torch.randn(len(lengths), HV, K, V, device=DEV, generator=gen)
    o = torch.empty(cu[-1], HV, V, device=DEV, dtype=torch.bfloat16)
    return x, pool, cu, o, make_launch(x, o, pool, cu, list(range(len(lengths))), layout)


def prefill(fla_ok: bool) -> None:
    chunked = BACKENDS["triton"].kernel("chunked")
    rows = []
    for T in (2048, 4096, 8192, 16384, 32768):
        x, pool, cu, _, launch = packed_case([T])
        row = dict(T=T, gdnc_chunked_us=gpu_us(functools.partial(chunked, launch)))
        if fla_ok:
            cu_t = torch.tensor(cu, device=DEV)
            row["fla_chunk_us"] = gpu_us(functools.partial(fla_call, x, pool, cu_t, chunk=True))
        for key in [k for k in row if k.endswith("_us")]:
            row[key.replace("_us", "_Mtok_s")] = T / row[key]
        rows.append(row)
        print("prefill", {k: round(v, 2) for k, v in row.items()})
    RESULTS["prefill"] = rows


def mixed(fla_ok: bool) -> None:
    x, pool, cu, o, _ = packed_case([1] * 64 + [1024] * 4)
    cu_t = torch.tensor(cu, device=DEV)
    row = dict(gdnc_api_us=wall_us(lambda i: gated_delta_net(
        *x, pool, cu_t, scale=SCALE, qk_l2norm=True, backend="triton", out=o), calls=50))
    cu_host = torch.tensor(cu)
    row["gdnc_api_host_cu_us"] = wall_us(lambda i: gated_delta_net(
        *x, pool, cu_host, scale=SCALE, qk_l2norm=True, backend="triton", out=o), calls=50)
    if fla_ok:
        row["fla_chunk_all_us"] = wall_us(lambda i: fla_call(x, pool, cu_t, chunk=True), calls=50)
        dec = tuple(t[:64] for t in x)
        pre = tuple(t[64:] for t in x)
        cu_pre = cu_t[64:] - 64
        row["fla_split_us"] = wall_us(lambda i: (fla_call(dec, pool[:64]), fla_call(
            pre, pool[64:], cu_pre, chunk=True)), calls=50)
    print("mixed (wall time per call, host included)", {k: round(v, 1) for k, v in row.items()})
    RESULTS["mixed"] = row


def breakeven() -> None:
    chunked = BACKENDS["triton"].kernel("chunked")
    rows = []
    for T in (4, 8, 16, 24, 32, 48, 64, 128):
        launch, launch_vk = (packed_case([T] * 32, layout)[-1] for layout in ("kv", "vk"))
        row = dict(T=T, recurrent_us=gpu_us(functools.partial(run, launch)),
                   recurrent_vk_us=gpu_us(functools.partial(run, launch_vk)),
                   chunked_us=gpu_us(functools.partial(chunked, launch)))
        rows.append(row)
        print("breakeven B=32", {k: round(v, 2) for k, v in row.items()})
    RESULTS["breakeven"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("check", "sweep", "decode", "prefill", "mixed", "breakeven"):
        ap.add_argument(f"--{name}", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if not any(getattr(args, n) for n in ("check", "sweep", "decode", "prefill", "mixed",
                                          "breakeven")):
        args.check = args.decode = True
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
        fla_ok = True
    except ImportError as exc:
        print(f"fla unavailable, gdnc only: {exc}")
        fla_ok = False
    props = torch.cuda.get_device_properties(DEV)
    RESULTS["device"] = dict(name=torch.cuda.get_device_name(), sms=props.multi_processor_count,
                             l2_bytes=props.L2_cache_size, torch=torch.__version__,
                             date=time.strftime("%Y-%m-%d"))
    bw = copy_bandwidth()
    RESULTS["copy_bw_GBs"] = bw / 1e9
    print(RESULTS["device"], f"copy bandwidth {bw / 1e9:.0f} GB/s")
    for name, fn in (("check", lambda: check(fla_ok)), ("sweep", sweep),
                     ("decode", lambda: decode(bw, fla_ok)), ("prefill", lambda: prefill(fla_ok)),
                     ("mixed", lambda: mixed(fla_ok)), ("breakeven", breakeven)):
        if getattr(args, name):
            try:
                fn()
            except Exception as exc:  # report and go on to the next section
                traceback.print_exc()
                RESULTS[name] = {"error": repr(exc)}
            write_text(os.path.join(args.out, "bench_gpu.json"), json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
