"""Rich tables for conversion reports, inspections and comparisons."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from gdnc.compare import CompareResult
from gdnc.gguf_compare import GgufComparison
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
    if report.misses:
        table = Table(title="near-misses (not fused)")
        table.add_column("rule")
        table.add_column("reason")
        for m in report.misses:
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


def print_compare(console: Console, result: CompareResult) -> None:
    table = Table(title=f"fused vs unfused (tolerance: relative L2 <= {result.tolerance:g})")
    for col in ("output", "runner", "max |diff|", "rel L2", "result"):
        table.add_column(col)
    for d in result.diffs:
        verdict = "[green]pass[/]" if d.passed else "[red]FAIL[/]"
        table.add_row(d.name, d.runner, f"{d.max_abs:.3e}", f"{d.rel_l2:.3e}", verdict)
    console.print(table)


def print_gguf_compare(console: Console, result: GgufComparison) -> None:
    table = Table(title=f"fused vs unfused graphs of {result.model} ({result.device}); "
                        f"nodes {result.fused_nodes} vs {result.unfused_nodes}")
    for col in ("prompt", "tokens", "max |Δlogit|", "top-1 agree", "ppl fused", "ppl unfused"):
        table.add_column(col, overflow="fold" if col == "prompt" else "ellipsis")
    for p in result.prompts:
        agree = f"{p.top1_agreement:.1%}"
        table.add_row(p.prompt[:40].replace("\n", " "), str(p.tokens), f"{p.max_abs_logit_diff:.2e}",
                      agree if p.top1_agreement == 1 else f"[red]{agree}[/]",
                      f"{p.perplexity_fused:.4f}", f"{p.perplexity_unfused:.4f}")
    console.print(table)
    console.print("[green]pass[/]: top-1 identical everywhere" if result.passed
                  else "[red]FAIL[/]: top-1 differs")
