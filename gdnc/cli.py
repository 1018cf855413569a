"""``gdnc`` command line: typer options wired to ``gdnc.commands`` (one module per command, which
decides ONNX vs GGUF and calls the library); errors caught here, once.

Annotations are real objects (no ``from __future__ import annotations``), so typer reads the
options without evaluating any source text at run time."""

import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from gdnc import __version__, interrupt
from gdnc.commands.llama_flags import LlamaHabits
from gdnc.errors import GdncError, GdncWarning, first_line, foreign_error
from gdnc.models.registry import supported_architectures

PIPED_WIDTH = 1000
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fuse per-token Gated DeltaNet subgraphs into one op, and run them.")
# piped or redirected (and no COLUMNS given), tables are not wrapped at rich's default 80 columns
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)
err = Console(stderr=True)
GEN, SAMPLING, ONNX_RUN = "GGUF: generation", "GGUF: sampling (llama.cpp's meaning)", "ONNX"


def _print_version(value: bool) -> None:
    if value:
        out.print(f"gdnc {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print gdnc's version and exit")) -> None:
    """Fuse per-token Gated DeltaNet subgraphs into one op, and run them."""


@app.command()
def convert(
    model: Path = typer.Argument(..., help="input ONNX model, or a GGUF hybrid (.gguf)"),
    output: Path = typer.Option(..., "-o", "--output", help="converted ONNX model to write"),
    target: str = typer.Option(
        "native", help="native (ai.gdnc node + function body) or ort (LinearAttention)"),
    report: Path | None = typer.Option(None, help="also write the report as JSON here"),
    dump_after: str | None = typer.Option(
        None, help="write the graph after this stage (shapes, fold-constants, shapes-2, canonicalize, fuse, "
                   "simplify, shapes-3)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    unfused: bool = typer.Option(False, "--unfused", help="GGUF: write the unfused graph of one batch"),
    lengths: str | None = typer.Option(
        None, help='GGUF with --unfused: token counts of the batch\'s sequences, e.g. "5,3" (default 8)'),
) -> None:
    """Fuse every delta-net chain of MODEL and write the result (a GGUF model: write it as
    ONNX with external weights, fused or unfused)."""
    from gdnc.commands.convert import convert as command

    command(model, output=output, target=target, report=report, dump_after=dump_after, as_json=as_json,
            quiet=quiet, unfused=unfused, lengths=lengths, out=out, err=err)


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="ONNX model, or a GGUF hybrid"),
    lengths: str | None = typer.Option(
        None, help='GGUF: token counts of the batch whose unfused graph is inspected (default "2,3")'),
    as_json: bool = typer.Option(False, "--json"),
    draw: Path | None = typer.Option(None, "--draw", help="also draw one layer before/after (.svg, .png)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no report (with --draw: just the picture)"),
) -> None:
    """Op histogram, chains found, what would fuse and why not (a GGUF model: the unfused
    graph of one batch, whose per-sequence chains become one node per layer)."""
    from gdnc.commands.inspect import inspect as command

    command(model, lengths=lengths, as_json=as_json, draw=draw, quiet=quiet, out=out, err=err)


@app.command(cls=LlamaHabits)
def run(
    model: Path = typer.Argument(..., help="GGUF hybrid (generate text) or ONNX model (run once)"),
    prompt: list[str] = typer.Option([], "-p", "--prompt", rich_help_panel=GEN,
                                     help='a prompt; repeat for several; "-": read it from stdin'),
    prompt_file: list[Path] = typer.Option([], "-f", "--file", rich_help_panel=GEN,
                                           help="a file holding a prompt (repeatable; after the -p ones)"),
    n_new: int = typer.Option(32, "-n", "--n-predict", rich_help_panel=GEN,
                              help="tokens to generate per prompt (fewer when it ends at EOS)"),
    parallel: int | None = typer.Option(None, "-np", "--parallel", rich_help_panel=GEN,
                                        help="sequences served at once (default: all)"),
    ctx: int | None = typer.Option(None, "-c", "--ctx-size", "--ctx", rich_help_panel=GEN,
                                   help="context per sequence (default: longest prompt + n)"),
    prefill_chunk: int | None = typer.Option(
        None, rich_help_panel=GEN, help="feed prompts in chunks of this many tokens, between decodes"),
    fused_gdn: str = typer.Option("auto", "--fused-gdn", rich_help_panel=GEN, help="on, off or auto (= on)"),
    interpret: bool = typer.Option(False, "--interpret",
                                   help="run the graph op by op (the reference interpreter), not compiled"),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", rich_help_panel=GEN,
                                    help="generate all n tokens, past EOS"),
    temperature: float = typer.Option(0.0, "--temp", "--temperature", rich_help_panel=SAMPLING,
                                      help="0 = greedy"),
    seed: int = typer.Option(0, "-s", "--seed", rich_help_panel=SAMPLING,
                             help="sampling seed >= 0 (prompt i uses seed + i)"),
    top_k: int = typer.Option(0, "--top-k", rich_help_panel=SAMPLING,
                              help="keep the k likeliest tokens (0: off)"),
    top_p: float = typer.Option(1.0, "--top-p", rich_help_panel=SAMPLING,
                                help="keep the likeliest tokens up to probability p (1: off)"),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", rich_help_panel=SAMPLING,
                                         help="penalise the tokens of the last --repeat-last-n (1: off)"),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", rich_help_panel=SAMPLING,
                                      help="tokens the penalty looks back at (-1: all)"),
    inputs: Path | None = typer.Option(None, "--inputs", rich_help_panel=ONNX_RUN,
                                       help=".npz file, one array per input"),
    output: Path | None = typer.Option(None, "-o", "--output", rich_help_panel=ONNX_RUN,
                                       help=".npz file for the outputs"),
    device: str | None = typer.Option(None, help="cpu (default), cuda or cuda:N"),
    gpu_layers: str | None = typer.Option(
        None, "-ngl", "--n-gpu-layers", "--gpu-layers",
        help="llama.cpp's: 0 = cpu; N > 0 or all = cuda (every layer); auto = cuda when there is one"),
    threads: int | None = typer.Option(None, "-t", "--threads", help="torch threads (default: torch's)"),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="GGUF: only the generated text; ONNX: nothing"),
) -> None:
    """Generate text from a GGUF model (several prompts decode together), or run an ONNX model.
    llama.cpp's flags mean what they mean there; those gdnc lacks are refused with the reason."""
    from gdnc.commands.run import run as command

    command(model, prompt=prompt, prompt_file=prompt_file, n_new=n_new, parallel=parallel, ctx=ctx,
            prefill_chunk=prefill_chunk, fused_gdn=fused_gdn, interpret=interpret, ignore_eos=ignore_eos,
            temperature=temperature,
            seed=seed, top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
            inputs=inputs, output=output, device=device, gpu_layers=gpu_layers, threads=threads,
            as_json=as_json, quiet=quiet, out=out, err=err)


@app.command()
def compare(
    model: Path = typer.Argument(..., help="unfused ONNX model, or a GGUF hybrid"),
    inputs: Path | None = typer.Option(None, "--inputs", help="ONNX: .npz inputs (default: random)"),
    prompt: list[str] = typer.Option([], "-p", "--prompt", help="GGUF: prompts (default: a built-in set)"),
    target: str = typer.Option("native"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="GGUF: cpu or cuda"),
    eval_text: Path | None = typer.Option(
        None, "--eval", help="GGUF: also the perplexity of this text file (e.g. held-out text)"),
    window: int = typer.Option(128, help="GGUF --eval: tokens scored per window (each from an empty state)"),
    max_tokens: int | None = typer.Option(None, help="GGUF --eval: score at most this many tokens"),
    hf: Path | None = typer.Option(
        None, "--hf", help="GGUF --eval: the HF checkpoint folder the model came from (needs transformers)"),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no report: the exit code says it"),
) -> None:
    """ONNX: original in onnxruntime vs converted in gdnc and in onnxruntime. GGUF: fused vs
    unfused graphs (max |Δlogit|, top-1 agreement, perplexity; --eval: of a text, --hf: and of
    the HF model). Exit 1 on a mismatch."""
    from gdnc.commands.compare import compare as command

    command(model, inputs=inputs, prompt=prompt, target=target, seed=seed, device=device, eval_text=eval_text,
            window=window, max_tokens=max_tokens, hf=hf, as_json=as_json, quiet=quiet, out=out, err=err)


@app.command()
def bench(
    model: Path = typer.Argument(..., help=f"GGUF hybrid ({', '.join(supported_architectures())})"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    batches: str | None = typer.Option(None, help='decode batch sizes (default "1,2,4,8"; --quick "1,2")'),
    lengths: str | None = typer.Option(None, help='prefill lengths (default "16,64,256"; --quick "16,64")'),
    rounds: int | None = typer.Option(None, help="timed rounds per point (default 10; --quick 5)"),
    shape: list[str] = typer.Option([], help="op level also at HV,K,V, e.g. 32,128,128 (repeatable)"),
    threads: int | None = typer.Option(None, help="torch and onnxruntime threads (default: torch's)"),
    quick: bool = typer.Option(False, "--quick", help="the small grid and few rounds (seconds)"),
    e2e: bool = typer.Option(False, "--e2e", help="instead: the fused model end to end, prefill-512, "
                             "decode-64 of 1 and of 4 sequences (tokens/s; --lengths N and --batches N "
                             "set the prompt and the sequences decoded together)"),
    interpret: bool = typer.Option(False, "--interpret", help="with --e2e: the graph op by op, not compiled"),
    plot: Path | None = typer.Option(None, help="write a figure of the results here (.png, .svg, .pdf)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing but errors"),
) -> None:
    """Fused vs unfused GatedDeltaNet side by side on one device: the model's decode and prefill
    tokens/s, and the op at the model's shapes (and onnxruntime / fla where installed)."""
    from gdnc.commands.bench import bench as command

    command(model, device=device, batches=batches, lengths=lengths, rounds=rounds, shape=shape,
            threads=threads, quick=quick, e2e=e2e, interpret=interpret, plot=plot, as_json=as_json,
            quiet=quiet, out=out, err=err)


@app.command()
def ops(as_json: bool = typer.Option(False, "--json")) -> None:
    """The ops the gdnc runtime executes, with the opset versions of each implementation."""
    from gdnc.commands.ops import ops as command

    command(as_json=as_json, out=out)


@app.command()
def logits(
    model: Path = typer.Argument(..., help=f"GGUF model ({', '.join(supported_architectures())})"),
    tokens: str = typer.Option(..., "--tokens", help='token ids, e.g. "1 2 3"'),
    output: Path = typer.Option(..., "-o", "--output", help=".npy file: float32 [T, n_vocab]"),
    fused_gdn: str = typer.Option("on", "--fused-gdn", help="on / auto: fused GatedDeltaNet, off: unfused"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write the logits of every position of TOKENS (one forward pass from an empty state)."""
    from gdnc.commands.logits import logits as command

    command(model, tokens=tokens, output=output, fused_gdn=fused_gdn, device=device, as_json=as_json,
            quiet=quiet, out=out, err=err)


def _usage_errors() -> tuple[type, ...]:
    """The exception classes of bad command lines (``show()`` prints them, ``exit_code`` 2): typer's
    own since it vendors click (0.25+), click's before."""
    vendored = getattr(typer, "TyperException", None)
    if vendored is not None:
        return (vendored,)
    import click

    return (click.ClickException,)


def main() -> None:
    """Console entry point: one red line and exit code 1 for any gdnc error; one line for
    each gdnc warning."""
    with interrupt.recording(), warnings.catch_warnings():
        warnings.simplefilter("always", GdncWarning)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs) -> None:
            if not issubclass(category, GdncWarning):
                return shown(message, category, *args, **kwargs)
            err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

        warnings.showwarning = show
        _main()


def _main() -> None:
    try:
        code = app(standalone_mode=False)  # typer returns exit codes here: 130 for Ctrl-C
    except GdncError as exc:
        fix = f" [bold]fix:[/] {escape(exc.fix)}" if exc.fix else ""
        err.print(f"[red]error:[/] {escape(str(exc))}{fix}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("[red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        _stopped()
    except Exception as exc:  # noqa: BLE001 - the boundary: never a traceback for users
        if interrupt.received():  # a stop signal re-raised as another exception on its way here
            _stopped()
        if os.environ.get("GDNC_DEBUG"):
            raise
        if isinstance(exc, _usage_errors()):
            usage: Any = exc  # click's exception API, whichever package defines it
            usage.show()
            sys.exit(usage.exit_code)
        reason = foreign_error(exc)
        if reason is not None:
            err.print(f"[red]error:[/] {escape(reason)}", highlight=False, soft_wrap=True)
            sys.exit(1)
        err.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(first_line(exc))} "
                  "(GDNC_DEBUG=1 shows the traceback)", highlight=False, soft_wrap=True)
        sys.exit(2)
    if code == 130:  # typer's code for a KeyboardInterrupt (Terminated included)
        _stopped()
    if isinstance(code, int) and code:
        sys.exit(code)


def _stopped() -> NoReturn:
    """End a run stopped by SIGINT, SIGTERM or SIGHUP: its one line, exit 128 + the signal."""
    line, code = interrupt.ending()
    err.print(f"[red]{line}[/]")
    sys.exit(code)
