"""``gdnc bench MODEL``: model level and op level, fused vs unfused (and peers), on one device
in one run; tables, ``--json`` or nothing (``--quiet``), ``--plot FILE``.

Every input is checked before anything is measured: the model (a GGUF hybrid gdnc builds), the
files, the options, the device, the plot's target. Progress goes to stderr, and only when the
output is the tables. What is measured, and how: ``gdnc.bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    import torch

from gdnc.commands import command_files
from gdnc.errors import InputError
from gdnc.frontends.model_kind import require_gguf


def bench(model: Path, *, device: str, batches: str | None, lengths: str | None, rounds: int | None,
          shape: list[str], threads: int | None, quick: bool, e2e: bool, interpret: bool, plot: Path | None,
          as_json: bool, quiet: bool, out: Console, err: Console) -> None:
    """The command, its options as typed (strings parsed here)."""
    require_gguf(model, "bench")  # before the bench's own (slow) imports
    command_files.check(inputs=[model], outputs=[plot])
    from gdnc.bench.options import bench_options
    from gdnc.bench.run import measure
    from gdnc.commands.bench_plot import check_plot_target, write_plot
    from gdnc.commands.bench_tables import print_tables
    from gdnc.runtime.device import runtime_device

    opts = bench_options(device, batches, lengths, rounds, quick, shape, threads)
    resolved = runtime_device(opts.device)
    if e2e:
        if opts.threads is not None:
            import torch

            torch.set_num_threads(opts.threads)
        _end_to_end(model, resolved, opts.rounds if rounds is not None else None, not interpret, plot,
                    _one(opts.lengths, "--lengths") if lengths else None,
                    _one(opts.batches, "--batches") if batches else None, as_json, quiet, out, err)
        return
    if interpret:
        raise InputError("--interpret goes with --e2e")
    if plot is not None:
        check_plot_target(plot)
    result = measure(model, opts, resolved, err, show=not (as_json or quiet))
    if plot is not None:
        write_plot(plot, result)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    elif not quiet:
        print_tables(out, result)
        if plot is not None:
            out.print(f"wrote {plot}")


def _one(values: tuple[int, ...], option: str) -> int:
    """The one value ``option`` may give with ``--e2e``."""
    if len(values) != 1:
        raise InputError(f"{option} takes one number with --e2e, got {len(values)}")
    return values[0]


def _end_to_end(model: Path, device: torch.device, rounds: int | None, compiled: bool, plot: Path | None,
                prompt: int | None, seqs: int | None, as_json: bool, quiet: bool, out: Console,
                err: Console) -> None:
    """``--e2e``: the fused model end to end (``gdnc.bench.end_to_end``); ``prompt`` and
    ``seqs`` (None: the defaults) from ``--lengths`` and ``--batches``."""
    from gdnc.bench.end_to_end import PROMPT, ROUNDS, SEQS, measure_e2e
    from gdnc.commands.bench_tables import e2e_table

    if plot is not None:
        raise InputError("--plot draws the fused-vs-unfused grid, not --e2e")
    result = measure_e2e(model, device, rounds=rounds or ROUNDS, prompt=prompt or PROMPT, seqs=seqs or SEQS,
                         compiled=compiled, console=err, show=not (as_json or quiet))
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    elif not quiet:
        out.print(e2e_table(result))
