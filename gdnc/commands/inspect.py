"""``gdnc inspect MODEL``: op histogram, chains found, what would fuse and why not (a GGUF
hybrid: the unfused graph of one batch); ``--draw``: one layer before/after."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from gdnc import progress
from gdnc.commands import command_files


def inspect(model: Path, *, lengths: str | None, as_json: bool, draw: Path | None, quiet: bool,
            out: Console, err: Console) -> None:
    """The command, its options as typed; MODEL's kind (``model_kind``) picks the loader."""
    command_files.check(models=[model], outputs=[draw])
    drawing = None
    if draw is not None:  # checked before anything is loaded
        from gdnc.drawing import InspectDrawing

        drawing = InspectDrawing(draw, model.name)
    from gdnc.commands.conversion_report import print_histogram, print_report
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import GGUF, model_kind
    from gdnc.passes.convert import inspect_model

    with progress.bars(err, enabled=not (as_json or quiet)):
        if model_kind(model) == GGUF:
            from gdnc.commands.gguf_export import parse_lengths
            from gdnc.frontends.gguf_file import GgufFile
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
