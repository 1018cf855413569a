"""``gdnc bench MODEL``: model level and op level, fused vs unfused (and peers), on one device
in one run; tables, ``--json`` or nothing (``--quiet``), ``--plot FILE``.

Every input is checked before anything is measured: the device, the plot's target, the model
(a GGUF hybrid gdnc builds). Progress goes to stderr, and only when the output is the tables."""

from __future__ import annotations

import json
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
from gdnc.bench.plot import check_plot_target, write_plot
from gdnc.bench.results import BenchResult
from gdnc.bench.tables import print_tables
from gdnc.bench.timing import device_info
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.config import hybrid_config
from gdnc.runtime.device import runtime_device


def _load() -> tuple[float, ...]:
    """The 1-minute load average, where the OS has one."""
    try:
        return (os.getloadavg()[0],)
    except OSError:
        return ()


def run_bench(model: Path, opts: BenchOptions, plot: Path | None, as_json: bool, quiet: bool,
              out: Console, err: Console) -> BenchResult:
    """Check the inputs, measure every job, then plot and print; the result (also for callers)."""
    start = time.perf_counter()
    device = runtime_device(opts.device)
    if plot is not None:
        check_plot_target(plot)
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
    with progress.bars(err, enabled=not (as_json or quiet)):
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
    if plot is not None:
        write_plot(plot, result)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    elif not quiet:
        print_tables(out, result)
        if plot is not None:
            out.print(f"wrote {plot}")
    return result
