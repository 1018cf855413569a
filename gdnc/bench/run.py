"""One ``gdnc bench`` run: plan the jobs of a GGUF hybrid's model level and op level, measure the
copy bandwidth, then every job; progress bars on ``console`` when ``show``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console

from gdnc import progress
from gdnc.bench.model_level import model_plan
from gdnc.bench.op_level import op_plan
from gdnc.bench.options import BenchOptions, GdnShape
from gdnc.bench.plan import Context
from gdnc.bench.results import BenchResult
from gdnc.bench.timing import device_info
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.config import hybrid_config


def _load() -> tuple[float, ...]:
    """The 1-minute load average, where the OS has one."""
    try:
        return (os.getloadavg()[0],)
    except OSError:
        return ()


def measure(model: Path, opts: BenchOptions, device: torch.device, console: Console,
            show: bool) -> BenchResult:
    """Every measurement of ``opts`` for the GGUF hybrid ``model`` on ``device`` (resolved by the
    caller); ``wall_s`` counts from the model's loading."""
    start = time.perf_counter()
    file = GgufFile(model)
    cfg = hybrid_config(file)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    ctx = Context(device, opts)
    shapes = tuple(dict.fromkeys((GdnShape(cfg.n_v_heads, cfg.k_dim, cfg.v_dim), *opts.shapes)))
    op_suites, op_jobs = op_plan(cfg, shapes, ctx)  # first: it refuses shapes the memory cannot hold
    model_suites, model_jobs = model_plan(file, ctx)
    jobs = model_jobs + op_jobs
    result = BenchResult(str(model), cfg.arch, device_info(device), opts.rounds,
                         suites=model_suites + op_suites)
    result.load = _load()
    with progress.bars(console, enabled=show):
        bar = progress.task("copy bandwidth", total=len(jobs) + 1)
        ctx.measure_copy_bandwidth()
        for job in jobs:
            bar.advance()
            bar.describe(job.label)
            job.run()
        bar.advance()
    result.copy_bandwidth_gbps = ctx.copy_gbps
    result.wall_s = time.perf_counter() - start
    result.load += _load()
    return result
