"""Rich tables of a conversion report (``gdnc convert``, and ``gdnc inspect``'s "would fuse"),
and of the op histogram before and after (``gdnc inspect``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from gdnc.passes.pipeline import ConversionReport


def print_report(console: Console, report: ConversionReport, title: str = "conversion") -> None:
    console.print(
        f"[bold]{title}[/]: {report.nodes_before} nodes -> {report.nodes_after} nodes, "
        f"{len(report.chains)} chain(s) fused, {report.seconds:.2f} s"
    )
    if report.chains:
        table = Table(title="fused chains")
        for col in ("node", "seqs", "T", "HV", "K", "V", "layout", "gate", "init"):
            table.add_column(col, no_wrap=col == "node")
        for c in report.chains:
            table.add_row(c.node, str(c.sequences), str(c.steps), str(c.heads), str(c.key_dim),
                          str(c.value_dim), c.layout, c.gate, "yes" if c.initial_state else "zeros")
        console.print(table)
    if report.unfused:  # other rules' near-misses change nothing of what fuses: --json lists them
        table = Table(title="near-misses (not fused)")
        table.add_column("rule")
        table.add_column("reason")
        for m in report.unfused:
            table.add_row(m.rule, m.reason)
        console.print(table)


def print_histogram(console: Console, before: dict[str, int], after: dict[str, int]) -> None:
    table = Table(title="op histogram")
    table.add_column("op")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for op in sorted(set(before) | set(after), key=lambda o: (-before.get(o, 0), o)):
        table.add_row(op, str(before.get(op, 0)), str(after.get(op, 0)))
    console.print(table)
