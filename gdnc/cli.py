"""``gdnc`` command line: a thin typer layer over the library; errors caught here, once.

Annotations are real objects (no ``from __future__ import annotations``), so typer reads the
options without evaluating any source text at run time."""

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from gdnc import __version__, interrupt, progress
from gdnc.errors import GdncError, GdncWarning, first_line, foreign_error
from gdnc.llama_flags import LlamaHabits
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


def _dump_after(stage: str | None, path: Path | None):
    if stage is None or path is None:  # both or neither
        return None
    from gdnc.errors import InputError
    from gdnc.ir.to_onnx import save_onnx
    from gdnc.passes.pipeline import STAGES

    names = [name for name, _ in STAGES]
    if stage not in names:
        raise InputError(f"--dump-after: there is no stage {stage!r}; the stages are {', '.join(names)}")

    def dump(name: str, model) -> None:
        if name == stage:
            save_onnx(model, path)
    return dump


def _dump_file(stage: str | None, output: Path) -> Path | None:
    """Where ``--dump-after STAGE`` writes: beside the output (in the working folder if that
    is a stream, such as /dev/stdout)."""
    from gdnc.atomic import writes_in_place

    if stage is None:
        return None
    return (Path(".") if writes_in_place(output) else output.parent) / f"after-{stage}.onnx"


@app.command()
def convert(
    model: Path = typer.Argument(..., help="input ONNX model, or a GGUF hybrid (.gguf)"),
    output: Path = typer.Option(..., "-o", "--output", help="converted ONNX model to write"),
    target: str = typer.Option(
        "native", help="native (ai.gdnc node + function body) or ort (LinearAttention)"),
    report: Path | None = typer.Option(None, help="also write the report as JSON here"),
    dump_after: str | None = typer.Option(
        None, help="write the graph after this stage (shapes, fold-constants, shapes-2, fuse, simplify, "
                   "shapes-3)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    unfused: bool = typer.Option(False, "--unfused", help="GGUF: write the unfused graph of one batch"),
    lengths: str | None = typer.Option(
        None, help='GGUF with --unfused: token counts of the batch\'s sequences, e.g. "5,3" (default 8)'),
) -> None:
    """Fuse every delta-net chain of MODEL and write the result (a GGUF model: write it as
    ONNX with external weights, fused or unfused)."""
    from gdnc import command_files
    from gdnc.convert import convert_file
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import GGUF, model_kind
    from gdnc.reporting import print_report

    dump_file = _dump_file(dump_after, output)
    dump = _dump_after(dump_after, dump_file)  # an unknown stage: refused before any work
    command_files.check(models=[model], outputs=[output, report, dump_file])
    if model_kind(model) == GGUF:
        from gdnc.atomic import write_json
        from gdnc.gguf_export import DEFAULT_LENGTHS, export_gguf, parse_lengths

        if lengths is not None and not unfused:
            raise InputError("--lengths needs --unfused (the fused graph serves every batch)")
        if dump_after is not None:
            raise InputError("--dump-after applies to ONNX input only, not to GGUF")
        comp = parse_lengths(lengths) if lengths is not None else DEFAULT_LENGTHS
        with progress.bars(err, enabled=not quiet and not as_json):
            info = export_gguf(model, output, unfused=unfused, lengths=comp, target=target)
        if report is not None:
            write_json(report, info)
        if as_json:
            out.print_json(json.dumps(info))
        elif not quiet:
            kind = f"unfused, batch {info['composition']}" if unfused else f"fused, target {target}"
            out.print(f"{info['architecture']} ({kind}): {info['nodes']} nodes, "
                      f"{info['gated_delta_net_nodes']} GatedDeltaNet")
            out.print(f"wrote {output} (weights in {info['external_data']})")
        return
    if unfused or lengths is not None:
        raise InputError("--unfused and --lengths apply to GGUF input (MODEL.gguf) only")
    with progress.bars(err, enabled=not quiet and not as_json):
        rep = convert_file(model, output, target=target, report_path=report, dump_after=dump)
    if as_json:
        out.print_json(json.dumps(rep.to_json()))
    elif not quiet:
        print_report(out, rep)
        out.print(f"wrote {output}")


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
    from gdnc import command_files

    command_files.check(models=[model], outputs=[draw])
    drawing = None
    if draw is not None:  # checked before anything is loaded
        from gdnc.drawing import InspectDrawing

        drawing = InspectDrawing(draw, model.name)
    from gdnc.convert import inspect_model
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import GGUF, model_kind
    from gdnc.reporting import print_histogram, print_report

    with progress.bars(err, enabled=not (as_json or quiet)):
        if model_kind(model) == GGUF:
            from gdnc.frontends.gguf_file import GgufFile
            from gdnc.gguf_export import parse_lengths
            from gdnc.models.qwen_hybrid.graph import Composition, build_unfused

            graph = build_unfused(GgufFile(model), Composition(parse_lengths(lengths or "2,3")))
        else:
            from gdnc.frontends.onnx_model import load_onnx

            if lengths is not None:
                raise InputError("--lengths applies to GGUF models only")
            graph = load_onnx(model)
        rep = inspect_model(graph, dump_after=None if drawing is None else drawing.capture)
        drew = None if drawing is None else drawing.write(rep)
    if quiet:
        return
    if as_json:
        data = rep.to_json()
        if drew:
            data["drawing"] = str(draw)
        out.print_json(json.dumps(data))
        return
    print_histogram(out, rep.ops_before, rep.ops_after)
    print_report(out, rep, title="would fuse")
    if drew:
        out.print(drew, markup=False, highlight=False, soft_wrap=True)


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
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import GGUF, model_kind
    from gdnc.llama_flags import device_for

    if threads is not None and not 1 <= threads <= 1024:
        raise InputError(f"--threads: {threads} is not in 1..1024")
    kind = model_kind(model)
    device = device_for(device, gpu_layers)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if kind == GGUF:
        if inputs is not None or output is not None:
            raise InputError("--inputs / -o apply to ONNX models; a GGUF model takes -p PROMPT")
        from gdnc.generate import GenerateOptions, generate_text, read_prompts
        from gdnc.runtime.sampling import Sampling

        sampling = Sampling(temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
                            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n)
        opts = GenerateOptions(prompts=read_prompts(prompt, prompt_file), n_new=n_new,
                               parallel=parallel, sampling=sampling,
                               fused=fused_gdn if _fused_flag(fused_gdn) else "off", ctx=ctx,
                               prefill_chunk=prefill_chunk, device=device, ignore_eos=ignore_eos)
        generate_text(model, opts, out, err, as_json=as_json, quiet=quiet)
        return
    if inputs is None:
        raise InputError("an ONNX model needs --inputs X.npz (a GGUF model takes -p PROMPT)")
    _run_onnx(model, inputs, output, device, as_json, quiet)


def _fused_flag(value: str) -> bool:
    from gdnc.errors import InputError

    if value not in ("on", "off", "auto"):
        raise InputError(f"--fused-gdn: {value!r} is not on, off or auto")
    return value != "off"


def _run_onnx(model: Path, inputs: Path, output: Path | None, device: str, as_json: bool,
              quiet: bool) -> None:
    import numpy as np

    from gdnc import command_files
    from gdnc.frontends.onnx_model import load_onnx
    from gdnc.npz_io import load_npz, save_npz
    from gdnc.opset.onnx_ops.dtypes import array_from_tensor
    from gdnc.runtime.executor import Executor

    command_files.check(models=[model], inputs=[inputs], outputs=[output])
    feeds = load_npz(inputs)
    with progress.bars(err, enabled=not (as_json or quiet)):
        results = {k: array_from_tensor(v) for k, v in Executor(load_onnx(model), device).run(feeds).items()}
        if output is not None:
            save_npz(output, results)
    summary = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                   "mean": float(np.mean(v)) if v.size else 0.0} for k, v in results.items()}
    if as_json:
        out.print_json(json.dumps(summary))
    elif not quiet:
        for name, info in summary.items():
            out.print(f"{name}: shape {info['shape']} {info['dtype']} mean {info['mean']:.6g}")


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
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import GGUF, model_kind
    from gdnc.reporting import print_compare, print_gguf_compare

    show = not (as_json or quiet)
    if model_kind(model) == GGUF:
        from gdnc.gguf_compare import TextEval, compare_gguf

        if eval_text is None and (hf is not None or max_tokens is not None):
            raise InputError("--hf and --max-tokens apply to --eval TEXT", fix="add --eval FILE.txt")
        text = None if eval_text is None else TextEval(eval_text, window, max_tokens, hf)
        with progress.bars(err, enabled=show):
            gguf_result = compare_gguf(str(model), prompt or None, device, text)
        if as_json:
            out.print_json(json.dumps(gguf_result.to_json()))
        elif show:
            print_gguf_compare(out, gguf_result)
        if not gguf_result.passed:
            raise typer.Exit(1)
        return
    if eval_text is not None or hf is not None or max_tokens is not None:
        raise InputError("--eval, --hf and --max-tokens apply to GGUF models")
    from gdnc.compare import compare_file
    from gdnc.npz_io import load_npz

    with progress.bars(err, enabled=show):
        result = compare_file(model, inputs=None if inputs is None else load_npz(inputs),
                              target=target, seed=seed)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    elif show:
        out.print(f"{result.chains} chain(s) fused")
        print_compare(out, result)
    if not result.passed:
        raise typer.Exit(1)


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
    plot: Path | None = typer.Option(None, help="write a figure of the results here (.png, .svg, .pdf)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing but errors"),
) -> None:
    """Fused vs unfused GatedDeltaNet side by side on one device: the model's decode and prefill
    tokens/s, and the op at the model's shapes (and onnxruntime / fla where installed)."""
    from gdnc import command_files
    from gdnc.frontends.model_kind import require_gguf

    require_gguf(model, "bench")  # before the bench's own (slow) imports
    command_files.check(inputs=[model], outputs=[plot])
    from gdnc.bench.command import run_bench
    from gdnc.bench.options import bench_options

    opts = bench_options(device, batches, lengths, rounds, quick, shape, threads)
    run_bench(model, opts, plot, as_json, quiet, out, err)


@app.command()
def ops(as_json: bool = typer.Option(False, "--json")) -> None:
    """The ops the gdnc runtime executes, with the opset versions of each implementation."""
    from rich.table import Table

    import gdnc.runtime.executor  # noqa: F401  (registers every op)
    from gdnc.opset.registry import supported_ops

    table_data = supported_ops()
    if as_json:
        out.print_json(json.dumps(table_data))
        return
    table = Table(title=f"gdnc runtime: {len(table_data)} ops")
    table.add_column("op")
    table.add_column("implementations from opset")
    for op, versions in table_data.items():
        table.add_row(op, ", ".join(map(str, versions)))
    out.print(table)


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
    from gdnc import command_files

    command_files.check(inputs=[model], outputs=[output])
    import numpy as np

    from gdnc.atomic import open_replacing
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import require_gguf
    from gdnc.models.registry import open_gguf

    require_gguf(model, "logits")
    fused = _fused_flag(fused_gdn)
    try:
        ids = [int(t) for t in tokens.replace(",", " ").split()]
    except ValueError as exc:
        raise InputError(f"--tokens: {tokens!r} is not a list of integers",
                         fix='give token ids, e.g. --tokens "1 2 3"') from exc
    with progress.bars(err, enabled=not (quiet or as_json)):
        runner = open_gguf(str(model), fused=fused, device=device)
        result = runner.logits(ids).float().cpu().numpy()
        with open_replacing(output, "wb") as fh:
            np.save(fh, result)
    if as_json:
        out.print_json(json.dumps({"output": str(output), "shape": list(result.shape),
                                   "fused_gdn": fused_gdn, "argmax": result.argmax(-1).tolist()}))
    elif not quiet:
        out.print(f"wrote {output}: float32 {list(result.shape)} (fused GatedDeltaNet {fused_gdn})")


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
