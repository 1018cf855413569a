"""Op level: the GatedDeltaNet op at a GdnShape, decode (B sequences of one token, the states
rotated over pools that overflow the cache; state bytes read + written per second) and prefill
(one sequence of L tokens; tokens per second).

Competitors, each timed in its own block (warm-up, then the rounds): ``fused``, gdnc's kernel
through the public ``gdnc.gated_delta_net`` (cpu backend, or triton on CUDA; algorithm
auto; output into a preallocated buffer); ``unfused``, the per-token chain of the unfused graph
run by gdnc's executor; and the peers where installed (``peers``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from gdnc.bench import peers
from gdnc.bench.op_inputs import ROTATION_OVERFLOW, OpInputs, op_bytes, rotation_copies
from gdnc.bench.options import GdnShape
from gdnc.bench.plan import WARMUP, Context, Job
from gdnc.bench.results import FUSED, UNFUSED, Measure, Suite
from gdnc.bench.timing import cache_bytes, time_calls
from gdnc.bench.unfused_chain import UnfusedChain
from gdnc.errors import first_line
from gdnc.lowering.gated_delta_net.api import gated_delta_net
from gdnc.lowering.gated_delta_net.backends import KERNEL_BACKENDS, GdnCall, first_accepting
from gdnc.models.qwen_hybrid.config import HybridConfig
from gdnc.runtime import memory

Call = Callable[[int], object]
Factory = Callable[[OpInputs], Call]


def fused_call(x: OpInputs) -> Call:
    operands = dict(zip(("q", "k", "v", "g", "beta", "state_pool"), (*x.packed, x.pools[0])))
    backend = first_accepting(GdnCall(operands), KERNEL_BACKENDS).name

    def run(i: int) -> None:
        gated_delta_net(*x.packed, x.pools[i % x.copies], x.cu_seqlens, scale=1.0, backend=backend, out=x.o)
    return run


def competitors(cfg: HybridConfig, device: torch.device) -> dict[str, tuple[Factory, str | None]]:
    """name -> (call factory, why it cannot run here or None)."""
    threads = torch.get_num_threads()
    return {FUSED: (fused_call, None), UNFUSED: (partial(UnfusedChain, cfg), None),
            peers.ORT_LA: (partial(peers.OrtLinearAttention, threads=threads), peers.ort_unavailable(device)),
            peers.FLA: (peers.FlaGatedDeltaRule, peers.fla_unavailable(device))}


def op_measure(ctx: Context, make: Factory, shape: GdnShape, batch: int,
               tokens: int, copies: int) -> Measure:
    x = OpInputs(shape, batch, tokens, copies, ctx.device)
    decode = tokens == 1
    with torch.inference_mode():  # the executor's pools are inference tensors
        timing = time_calls(make(x), ctx.opts.rounds, WARMUP + (copies if decode else 0), ctx.sync)
    return Measure.of(timing, batch * tokens, 2 * batch * shape.state_bytes if decode else None,
                      ctx.copy_gbps)


def peer_measure(suite: Suite, name: str, measure: Callable[[], Measure | None]) -> Measure | None:
    """``measure()``, or None with the reason in ``suite.skipped`` when the peer fails."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - a broken peer is reported, it does not stop the run
        suite.skipped[name] = f"failed: {first_line(exc)}"
        return None


def check_memory(shape: GdnShape, ctx: Context, cache: int) -> None:
    """MemoryShortError, before anything is allocated, when the largest op-level point at
    ``shape`` needs more memory than the device has available."""
    points = [(f"decode at batch {b}", b, 1, rotation_copies(shape, b, cache)) for b in ctx.opts.batches]
    points += [(f"prefill of {n} tokens", 1, n, 1) for n in ctx.opts.lengths]
    what, batch, tokens, copies = max(points, key=lambda p: sum(op_bytes(shape, *p[1:]).values()))
    memory.require(op_bytes(shape, batch, tokens, copies), ctx.device,
                   f"the op level at HVxKxV {shape.label} ({memory.size(shape.state_bytes)} of state "
                   f"per sequence), {what},", fix="give a smaller --shape, --batches or --lengths")


def op_plan(cfg: HybridConfig, shapes: tuple[GdnShape, ...], ctx: Context) -> tuple[list[Suite], list[Job]]:
    """Suites op_decode (x: batch) and op_prefill (x: length) per shape; one job per competitor
    and point. Every shape's memory is checked first (``check_memory``); decode points whose
    rotated pools cannot overflow the last-level cache as planned are noted in the suite
    (``cache_resident``)."""
    cache = cache_bytes(ctx.device)
    for shape in shapes:
        check_memory(shape, ctx, cache)
    suites, jobs = [], []
    for shape in shapes:
        decode = Suite("op_decode", f"Op decode (T = 1), HVxKxV {shape.label}", "batch", ctx.opts.batches,
                       shape)
        pools = {b: rotation_copies(shape, b, cache) * b * shape.state_bytes for b in decode.xs}
        decode.cache_bytes = cache
        decode.cache_resident = {b: n for b, n in pools.items() if n < ROTATION_OVERFLOW * cache}
        prefill = Suite("op_prefill", f"Op prefill: one sequence of L tokens, HVxKxV {shape.label}",
                        "length", ctx.opts.lengths, shape)
        suites += [decode, prefill]
        for name, (make, unavailable) in competitors(cfg, ctx.device).items():
            for suite in (decode, prefill):
                if unavailable is not None:
                    suite.skipped[name] = unavailable
                    continue
                for point in suite.xs:
                    batch, tokens = (point, 1) if suite is decode else (1, point)
                    copies = rotation_copies(shape, batch, cache) if suite is decode else 1
                    measure: Callable[[], Measure | None] = partial(op_measure, ctx, make, shape, batch,
                                                                    tokens, copies)
                    if name not in (FUSED, UNFUSED):
                        measure = partial(peer_measure, suite, name, measure)
                    where = f"decode B={point}" if suite is decode else f"prefill L={point}"
                    jobs.append(Job(f"op {where}, {name}, {shape.label}", suite, point, name, measure))
    return suites, jobs
