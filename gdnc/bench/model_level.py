"""Model level: a GGUF hybrid's fused and unfused graphs (``HybridModel``) decoding B sequences
together, and prefilling one prompt of L tokens.

Decode: B slots holding one token each, then greedy steps of all B at once (the step's argmax
read back, as generation does); ms per step and B tokens per step. Prefill: one sequence of L
random tokens from a freshly zeroed slot, ms per forward and L tokens per forward. The first
warm-up call builds the graph (fused: once; unfused: per batch composition)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from gdnc.bench.plan import WARMUP, Context, Job
from gdnc.bench.results import FUSED, UNFUSED, Measure, Suite
from gdnc.bench.timing import time_calls
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry


def decode_measure(model: HybridModel, batch: int, ctx: Context) -> Measure:
    """One decode step of ``batch`` sequences together."""
    rounds = ctx.opts.rounds
    pool = model.new_pool(batch, 1 + WARMUP + rounds)
    slots = [pool.allocate() for _ in range(batch)]
    last = [1 + n % (model.cfg.n_vocab - 1) for n in range(batch)]

    def step(i: int) -> None:
        logits = model.forward(pool, [Entry(s, (t,)) for s, t in zip(slots, last)])
        last[:] = torch.stack(logits).argmax(-1).tolist()

    step(-1)  # the one-token "prompts"
    return Measure.of(time_calls(step, rounds, WARMUP, ctx.sync), batch)


def prefill_measure(model: HybridModel, length: int, ctx: Context) -> Measure:
    """One forward of a ``length``-token prompt from an empty state."""
    prompt = tuple(int(t) for t in np.random.default_rng(length).integers(0, model.cfg.n_vocab, length))
    pool = model.new_pool(1, length)
    slot = pool.allocate()

    def fresh(i: int) -> None:
        pool.release(slot)
        pool.allocate()  # the same slot, zeroed

    def forward(i: int) -> None:
        model.forward(pool, [Entry(slot, prompt)])

    return Measure.of(time_calls(forward, ctx.opts.rounds, WARMUP, ctx.sync, setup=fresh), length)


def model_plan(file: GgufFile, ctx: Context) -> tuple[list[Suite], list[Job]]:
    """Suites model_decode (x: batch) and model_prefill (x: length): one job per graph kind
    and point."""
    decode = Suite("model_decode", "Model decode: B sequences decoding together", "batch",
                   ctx.opts.batches)
    prefill = Suite("model_prefill", "Model prefill: one prompt of L tokens", "length", ctx.opts.lengths)
    jobs = []
    for name, fused in ((FUSED, True), (UNFUSED, False)):
        model = HybridModel(str(file.path), fused=fused, device=str(ctx.device), file=file)
        jobs += [Job(f"model decode, {name}, B={b}", decode, b, name, partial(decode_measure, model, b, ctx))
                 for b in decode.xs]
        jobs += [Job(f"model prefill, {name}, L={n}", prefill, n, name,
                     partial(prefill_measure, model, n, ctx)) for n in prefill.xs]
    return [decode, prefill], jobs
