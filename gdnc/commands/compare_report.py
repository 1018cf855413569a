"""``gdnc compare``'s tables: ONNX outputs against onnxruntime's, GGUF fused vs unfused graphs,
the perplexity of an evaluated text."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from gdnc.commands.gguf_compare import GgufComparison
from gdnc.commands.heldout import HeldOut, relative_diff
from gdnc.commands.onnx_compare import CompareResult


def print_compare(console: Console, result: CompareResult) -> None:
    """The converted model's outputs (run by gdnc and by onnxruntime) against the original's in
    onnxruntime; the relative L2 is what the tolerance bounds."""
    table = Table(title=f"converted vs original in onnxruntime (pass: rel L2 <= {result.tolerance:g})")
    for col in ("output", "runner", "max |diff|", "rel L2", "result"):
        table.add_column(col)
    for d in result.diffs:
        verdict = "[green]pass[/]" if d.passed else "[red]FAIL[/]"
        table.add_row(d.name, d.runner, f"{d.max_abs:.3e}", f"{d.rel_l2:.3e}", verdict)
    console.print(table)


def print_gguf_compare(console: Console, result: GgufComparison) -> None:
    table = Table(title=f"fused vs unfused graphs of {result.model} ({result.device}); "
                        f"nodes {result.fused_nodes} vs {result.unfused_nodes}")
    table.add_column("prompt", no_wrap=True, max_width=16, overflow="ellipsis")
    for col in ("tokens", "max |Δlogit|", "top-1", "ppl fused", "ppl unfused"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in result.prompts:
        agree = f"{p.top1_agreement:.1%}"
        table.add_row(p.prompt[:40].replace("\n", " "), str(p.tokens), f"{p.max_abs_logit_diff:.2e}",
                      agree if p.top1_agreement == 1 else f"[red]{agree}[/]",
                      f"{p.perplexity_fused:.4f}", f"{p.perplexity_unfused:.4f}")
    console.print(table)
    top1 = all(p.top1_agreement == 1 for p in result.prompts)
    console.print("[green]pass[/]: top-1 identical everywhere" if top1 else "[red]FAIL[/]: top-1 differs")
    if result.heldout is not None:
        print_heldout(console, result.heldout)


def print_heldout(console: Console, held: HeldOut) -> None:
    """Perplexity per runner of the evaluated text, with the verdicts of ``HeldOut``; the Δ shown
    is the relative one its tolerances bound."""
    table = Table(title=f"perplexity of {held.text}: {held.tokens} tokens scored in {held.windows} "
                        f"windows of {held.width}")
    for col in ("runner", "perplexity", "relative Δ vs fused", "seconds"):
        table.add_column(col)
    names = {"fused": "gdnc fused graph", "unfused": "gdnc unfused graphs",
             "hf": f"HF transformers ({held.hf})"}
    base = held.perplexity["fused"]
    for key, ppl in held.perplexity.items():
        table.add_row(names[key], f"{ppl:.4f}", "" if key == "fused" else f"{relative_diff(ppl, base):+.1e}",
                      f"{held.seconds[key]:.1f}")
    console.print(table)
    same = ("to 4 digits" if held.device == "cpu"
            else f"within {held.fused_tolerance:.0e} relative (tf32 dots on {held.device})")
    verdicts = [(f"fused = unfused {same}", held.fused_matches_unfused)]
    if held.hf_matches is not None:
        verdicts.append(("fused = HF within 1e-3 relative", held.hf_matches))
    console.print("; ".join(f"[green]pass[/]: {text}" if ok else f"[red]FAIL[/]: not {text}"
                            for text, ok in verdicts))
