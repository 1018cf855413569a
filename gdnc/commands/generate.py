"""``gdnc run MODEL.gguf -p ...``: generate text for several prompts at once and report speed."""

from __future__ import annotations

import json
import os
import sys
from collections import abc
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.rule import Rule
from rich.text import Text

from gdnc import progress
from gdnc.commands.gguf_model import load_hybrid
from gdnc.errors import GenerationError, InputError, RewriteError
from gdnc.frontends.gguf_tokenizer import GgufTokenizer
from gdnc.lowering.quant import native_linear
from gdnc.runtime.generation import Request, Scheduler, Sequence
from gdnc.runtime.sampling import Sampling

RULE_WIDTH = 80  # each sequence's header rule, at most (piped output is 1000 columns wide)

END_OF_TEXT = " [end of text]"  # after a sequence that stopped at EOS, as llama.cpp prints it


@dataclass
class GenerateOptions:
    """``prompts``: str, or bytes meant as UTF-8 (a byte that is not UTF-8 is fed as its byte
    token); prompt i samples with ``sampling``'s seed + i."""

    prompts: abc.Sequence[str | bytes]
    n_new: int = 32
    parallel: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    fused: str = "auto"  # on, off, or auto: fused unless the pass leaves a layer unfused
    ctx: int | None = None
    prefill_chunk: int | None = None
    device: str = "cpu"
    ignore_eos: bool = False
    compiled: bool = True  # the fused graph as prepared calls (False: the interpreter)

    @property
    def shown(self) -> list[str]:
        """The prompts as text to show (a byte that is not UTF-8 as U+FFFD)."""
        return [p.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(p, str)
                else p.decode("utf-8", "replace") for p in self.prompts]


@dataclass
class TextStream:
    """Incremental detokenizer: ``push(token)`` returns the text that became printable (a
    token that ends inside a UTF-8 character waits for the rest)."""

    tokenizer: GgufTokenizer
    ids: list[int] = field(default_factory=list)
    shown: int = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[self.shown:], len(text)
        return new


def _scheduler(path: Path, opts: GenerateOptions) -> tuple[Scheduler, GgufTokenizer, list[list[int]]]:
    if not opts.prompts:
        raise InputError("give at least one prompt: -p TEXT")
    if opts.n_new < 1:
        raise InputError(f"-n must be >= 1, got {opts.n_new}")
    model = load_hybrid(path, fused=opts.fused != "off", device=opts.device,
                        prefill_chunk=opts.prefill_chunk, compiled=opts.compiled)
    tokenizer = GgufTokenizer.from_metadata(model.file.metadata)
    ids = [_encode(tokenizer, p, i, len(opts.prompts)) for i, p in enumerate(opts.prompts)]
    for text, toks in zip(opts.shown, ids):
        if not toks:
            raise InputError(f"prompt {text!r} encodes to no tokens")
    ctx = opts.ctx if opts.ctx is not None else max(len(t) for t in ids) + opts.n_new
    if opts.parallel is not None and opts.parallel < 1:
        raise InputError(f"--parallel must be >= 1, got {opts.parallel}")
    parallel = min(opts.parallel or len(ids), len(ids))
    sched = Scheduler(model, parallel, n_ctx=ctx, eos_id=tokenizer.eos_id)
    for i, toks in enumerate(ids):
        sched.submit(Request(tuple(toks), opts.n_new, replace(opts.sampling, seed=opts.sampling.seed + i),
                             stop_at_eos=not opts.ignore_eos))
    if model.fused:
        try:
            model.fused_executor()  # built before the timing starts
        except RewriteError:
            if opts.fused == "on":
                raise
            model.fused = False  # auto: the unfused graphs still run the model
    return sched, tokenizer, ids


def read_prompts(texts: list[str], files: list[Path]) -> list[bytes]:
    """The prompts of ``-p TEXT`` (the command line's bytes, as ``os.fsencode`` gives them back;
    "-": stdin's), then of ``-f FILE`` (the file's bytes; "-": stdin's). A prompt read from a
    file or stdin loses one trailing newline, as in llama.cpp. InputError for an unreadable file
    or stdin asked for twice."""
    sources = [("-p", text) for text in texts] + [("-f", str(path)) for path in files]
    if sum(value == "-" for _, value in sources) > 1:
        raise InputError("stdin holds one prompt: give - once (to -p or -f)")
    prompts = []
    for option, value in sources:
        if option == "-p" and value != "-":
            prompts.append(os.fsencode(value))
            continue
        read = Path(value).read_bytes
        if value == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:
                raise InputError(f"{option} -: there is no stdin to read the prompt from")
            read = stdin.read
        try:
            data = read()
        except OSError as exc:
            raise InputError(f"{option} {value}: cannot read the prompt ({exc.strerror or exc})") from None
        prompts.append(data[:-1] if data.endswith(b"\n") else data)
    return prompts


def _encode(tokenizer: GgufTokenizer, prompt: str | bytes, i: int, n: int) -> list[int]:
    """The ids of prompt ``i`` of ``n``; an error names which prompt when there are several."""
    try:
        return tokenizer.encode(prompt)
    except InputError as exc:
        if n == 1:
            raise
        raise InputError(f"prompt {i + 1} of {n}: {exc}", fix=exc.fix) from None


def generate_text(path: Path, opts: GenerateOptions, out: Console, err: Console, *,
                  as_json: bool = False, quiet: bool = False) -> list[Sequence]:
    """Generate, streaming text to ``out`` (one sequence: token by token; several: a live panel
    per sequence on a terminal, else each as it finishes), then a tokens/s line on ``err``;
    ``as_json``: one JSON line per sequence and one with the timing."""
    with progress.bars(err, enabled=not (quiet or as_json)):
        sched, tokenizer, ids = _scheduler(path, opts)
    streams = [TextStream(tokenizer) for _ in ids]
    shown = opts.shown
    single = len(ids) == 1 and not as_json
    total = opts.n_new * len(ids)  # at most: EOS may end sequences early
    live = None
    if not single and not as_json and out.is_terminal:  # every sequence streams in its panel
        live = Live(_panels(shown, streams, sched.sequences, quiet, total), console=out,
                    refresh_per_second=10, vertical_overflow="visible")

    def on_token(seq_id: int, token: int) -> None:
        piece = streams[seq_id].push(token)
        bar.advance()
        if single:
            sys.stdout.write(piece)
            sys.stdout.flush()
        elif live is not None:
            live.update(_panels(shown, streams, sched.sequences, quiet, total))
        elif not as_json and sched.sequences[seq_id].status != "running":
            _print_sequence(out, sched.sequences[seq_id], shown[seq_id], streams[seq_id], quiet)

    if single and not quiet:
        sys.stdout.write(shown[0])
    # the bar: in the live view (a terminal), on stderr when sequences print as they finish,
    # none when one sequence streams its text (the text is the progress)
    with live if live is not None else nullcontext(), \
            progress.bars(err, enabled=not (single or quiet or as_json or live is not None)):
        bar = progress.task("generating", total)
        sched.run(on_token)
        if live is not None:  # a failed sequence's panel shows why
            live.update(_panels(shown, streams, sched.sequences, quiet, total))
    failed = [s for s in sched.sequences if s.status == "failed"]
    if live is None and not single and not as_json:
        for seq in failed:
            _print_sequence(out, seq, shown[seq.id], streams[seq.id], quiet)
    if single:
        sys.stdout.write(("" if quiet else _ending(sched.sequences[0])) + "\n")
    model = sched.model
    timing = {**sched.timing.to_json(), "device": opts.device, "fused_gdn": model.fused,
              "native_weights": opts.device == "cpu" and native_linear.reason() is None,
              "parallel": sched.pool.slots, "compiled": model.fused and opts.compiled,
              "fused_graph_nodes": model.stats.fused_nodes,
              "fused_graph_builds": model.stats.fused_builds,
              "unfused_graph_builds": model.stats.unfused_builds,
              "unfused_graph_nodes": {",".join(map(str, k)): v
                                      for k, v in model.stats.unfused_nodes.items()}}
    if as_json:
        for seq, toks in zip(sched.sequences, ids):
            sys.stdout.write(json.dumps({
                "prompt": shown[seq.id], "prompt_ids": toks, "generated_ids": seq.generated,
                "text": tokenizer.decode(seq.generated, skip_special=True),
                "status": seq.status, "finish_reason": seq.finish_reason}) + "\n")
        sys.stdout.write(json.dumps({"timing": timing}) + "\n")
    elif not quiet:
        t = sched.timing
        sizes = model.stats.unfused_nodes.values()
        graphs = (f"fused graph: {model.stats.fused_nodes} nodes, built once" if model.fused else
                  f"unfused graphs: {model.stats.unfused_builds} built ({min(sizes)}-{max(sizes)} nodes)")
        err.print(f"{t.generated} tokens for {len(ids)} sequence(s) in {t.seconds:.2f} s: "
                  f"[bold]{timing['tokens_per_s']:.1f} tokens/s[/] generated, "
                  f"{timing['batch_tokens_per_s']:.1f} tokens/s through the model "
                  f"({t.prefill_tokens} prefill + {t.decode_tokens} decode, {t.steps} batches); {graphs}",
                  highlight=False, soft_wrap=True)
    if failed:
        raise GenerationError(f"{_failed_count(len(failed), len(ids))}; "
                              f"sequence {failed[0].id}: {failed[0].finish_reason}")
    return sched.sequences


def _failed_count(failed: int, total: int) -> str:
    """How many of the ``total`` sequences failed; the others (if any) completed."""
    if failed == total:
        return f"all {total} sequences failed" if total > 1 else "generation failed"
    return f"{failed} of {total} sequence(s) failed (the others completed)"


def _panels(prompts: list[str], streams: list[TextStream], seqs: list[Sequence], quiet: bool,
            total: int) -> Group:
    """One panel per sequence: prompt (dim) and the text so far; the title says its state; under
    them a bar of the tokens generated (of at most ``total``)."""
    panels: list[RenderableType] = []
    for seq, prompt, stream in zip(seqs, prompts, streams):
        text = Text(stream.tokenizer.decode(stream.ids, skip_special=True) + _ending(seq))
        if not quiet:
            text = Text.assemble((prompt, "dim"), text)
        state = seq.status if seq.finish_reason is None else f"{seq.status}: {seq.finish_reason}"
        panels.append(Panel(text, title=f"[{seq.id}] {state}", title_align="left"))
    done = sum(len(s.generated) for s in seqs)
    finished = all(s.status != "running" for s in seqs)
    bar = ProgressBar(total=total, completed=total if finished else done, width=40)
    panels.append(Columns([bar, Text(f"{done} tokens generated")]))
    return Group(*panels)


def _print_sequence(out: Console, seq: Sequence, prompt: str, stream: TextStream, quiet: bool) -> None:
    text = stream.tokenizer.decode(stream.ids, skip_special=True)
    if quiet:
        out.print(text, markup=False, highlight=False)
        return
    out.print(Rule(f"[{seq.id}]", align="left"), width=min(out.width, RULE_WIDTH))  # piped: not 1000 wide
    out.print(f"[dim]{_escape(prompt)}[/]{_escape(text + _ending(seq))}", highlight=False)


def _ending(seq: Sequence) -> str:
    """What plain output adds after a sequence's text: END_OF_TEXT when it stopped at EOS."""
    return END_OF_TEXT if seq.finish_reason == "eos" else ""


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
