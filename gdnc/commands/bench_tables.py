"""Rich tables of a ``BenchResult``: a header naming model, device, threads and load, then one
table per suite, a row per point and competitor (time, throughput, fused's speedup over it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from gdnc.bench.results import FUSED, BenchResult, Measure, Suite

if TYPE_CHECKING:
    from gdnc.bench.end_to_end import EndToEnd


def number(v: float) -> str:
    """Three significant digits, thousands separated, no exponent."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


Column = tuple[str, Callable[[Measure], str]]
TIME: Column = ("ms", lambda m: number(m.median_ms))
TOKENS: Column = ("tok/s", lambda m: number(m.tok_s))
COLUMNS: dict[str, list[Column]] = {
    "model_decode": [("ms/step", TIME[1]), TOKENS],
    "model_prefill": [TIME, TOKENS],
    "op_decode": [TIME, ("state GB/s", lambda m: number(m.gbps or 0.0)),
                  ("% copy bw", lambda m: f"{m.pct_copy_bw or 0.0:.1f}")],
    "op_prefill": [TIME, TOKENS],
}


def header(result: BenchResult) -> str:
    d = result.device
    parts = [f"[bold]gdnc bench[/] {Path(result.model).name} ({result.arch}) on {d['name']} ({d['kind']}, "
             f"{d['threads']} torch threads, torch {d['torch']})",
             f"copy bandwidth {number(result.copy_bandwidth_gbps)} GB/s",
             "wall time per call" + (", synchronized" if d["kind"] == "cuda" else "")
             + f", median of {result.rounds} rounds after warm-up", f"{result.wall_s:.1f} s"]
    if result.load:
        parts.append("load average " + " / ".join(f"{x:.1f}" for x in result.load) + " at start / end")
    return "; ".join(parts)


def _cache_note(suite: Suite) -> str | None:
    """Why the points marked * can pass 100% of the copy bandwidth (``Suite.cache_resident``)."""
    if not suite.cache_resident:
        return None
    pools = max(suite.cache_resident.values())
    return (f"* {suite.x_name} {', '.join(map(str, suite.cache_resident))}: the rotated state pools "
            f"({_mib(pools)} MiB at most) are too few bytes to overflow the {_mib(suite.cache_bytes)} MiB "
            "last-level cache as planned, so part of the states are read from the cache: such rows "
            "can pass 100% of the copy bandwidth (measured from memory)")


def _mib(n: int) -> str:
    return number(n / 2**20)


def suite_table(suite: Suite) -> Table:
    """Rows grouped by point; the last column is fused throughput / this competitor's. A point
    whose states partly stay in the cache has its % of copy bandwidth marked * (caption)."""
    notes = [f"{n}: {why}" for n, why in suite.skipped.items()]
    caption = "; ".join([*notes, *filter(None, [_cache_note(suite)])])
    table = Table(title=suite.title, caption=caption or None, title_justify="left")
    table.add_column(suite.x_name, justify="right")
    table.add_column("competitor")
    for head, _ in COLUMNS[suite.key]:
        table.add_column(head, justify="right")
    table.add_column("fused speedup", justify="right")
    for row in suite.rows:
        speedups = row.speedups()
        for j, (name, m) in enumerate(row.results.items()):
            cells = [str(row.x) if j == 0 else "", name, *(cell(m) for _, cell in COLUMNS[suite.key])]
            if row.x in suite.cache_resident:
                cells[-1] += "*"
            cells.append("" if name == FUSED else f"{speedups[name]:.2f}x" if name in speedups else "-")
            table.add_row(*cells, end_section=j == len(row.results) - 1)
    return table


def print_tables(console: Console, result: BenchResult) -> None:
    console.print(header(result), highlight=False)
    for suite in result.suites:
        console.print(suite_table(suite))


def e2e_table(result: EndToEnd) -> Table:
    """``--e2e``: one row per figure, tokens/s and (decode) the share of the rate that reading
    the weights once a step at the copy bandwidth would allow."""
    d = result.device
    table = Table(title=f"gdnc bench --e2e {Path(result.model).name} ({result.arch}) on {d['name']} "
                        f"({d['kind']}, {d['threads']} threads), "
                        f"{'compiled' if result.compiled else 'interpreted'}, median of {result.rounds}",
                  caption=f"weights read per decode step {_mib(result.weight_bytes)} MiB; copy bandwidth "
                          f"{number(result.copy_bandwidth_gbps)} GB/s (read + write); host time of a "
                          f"decode step {number(result.decode_host_us)} µs"
                          f"{', CUDA graphs' if result.cuda_graphs else ''}",
                  title_justify="left")
    for head in ("test", "tok/s", "% of weight-read bound"):
        table.add_column(head, justify="right" if head != "test" else "left")
    bound = result.decode_bound_tok_s
    table.add_row(f"prefill {result.prompt}", number(result.prefill_tok_s), "")
    table.add_row(f"decode {result.decode}, 1 sequence", number(result.decode_tok_s),
                  f"{100 * result.decode_tok_s / bound:.0f}")
    table.add_row(f"decode {result.decode}, {result.seqs} sequences", number(result.batch_decode_tok_s), "")
    return table
