"""``gdnc compare MODEL``: an ONNX model's original graph in onnxruntime vs its converted graph in
gdnc and in onnxruntime (``onnx_compare``); a GGUF hybrid's fused vs unfused graphs, and with
``--eval`` the perplexity of a text (``gguf_compare``). ``typer.Exit(1)`` on a mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from gdnc import progress
from gdnc.errors import InputError
from gdnc.frontends.model_kind import GGUF, model_kind


def compare(model: Path, *, inputs: Path | None, prompt: list[str], target: str, seed: int, device: str,
            eval_text: Path | None, window: int, max_tokens: int | None, hf: Path | None, as_json: bool,
            quiet: bool, out: Console, err: Console) -> None:
    """The command, its options as typed; MODEL's kind (``model_kind``) picks the branch."""
    from gdnc.commands.compare_report import print_compare, print_gguf_compare

    show = not (as_json or quiet)
    if model_kind(model) == GGUF:
        from gdnc.commands.gguf_compare import TextEval, compare_gguf

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
    from gdnc.commands.npz_io import load_npz
    from gdnc.commands.onnx_compare import compare_file

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
