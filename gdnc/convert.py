"""Library entry points behind ``gdnc convert`` / ``inspect``: load, fuse, emit, save."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from gdnc import command_files
from gdnc.atomic import keeping, write_json
from gdnc.errors import InputError
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import save_onnx
from gdnc.passes.pipeline import ConversionReport, fuse_model

TARGETS = ("native", "ort")


def emit_target(model: Model, target: str) -> None:
    """Make every fused node runnable by others: a function body, or ORT's LinearAttention."""
    if target == "native":
        from gdnc.passes.targets.native import attach_function_bodies

        attach_function_bodies(model)
    elif target == "ort":
        from gdnc.passes.targets.ort import lower_to_linear_attention

        lower_to_linear_attention(model)
    else:
        raise InputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")


def convert_model(
    model: Model, *, target: str = "native",
    dump_after: Callable[[str, Model], None] | None = None,
) -> ConversionReport:
    """Fuse ``model`` in place and emit ``target``; returns the report."""
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    report = fuse_model(model, dump_after=dump_after)
    emit_target(model, target)
    report.target = target
    report.nodes_after = len(model.graph)
    report.ops_after = model.graph.op_histogram()
    return report


def convert_file(
    src: str | Path, dst: str | Path, *, target: str = "native", report_path: str | Path | None = None,
    dump_after: Callable[[str, Model], None] | None = None,
) -> ConversionReport:
    """Read ``src`` (ONNX), fuse, write ``dst`` atomically (and the JSON report if asked; each
    file on its own). ``dst`` and the report may not be ``src`` or one of its external data
    files (``command_files.check``), and no write removes one of those."""
    inputs = command_files.check(models=[src], outputs=[dst, report_path])
    with keeping(inputs):
        model = load_onnx(src)
        report = convert_model(model, target=target, dump_after=dump_after)
        save_onnx(model, dst, external_data=model.external_data)
        if report_path is not None:
            write_json(report_path, report.to_json())
    return report


def inspect_model(
    model: Model, *, dump_after: Callable[[str, Model], None] | None = None
) -> ConversionReport:
    """What ``convert`` would do, on a copy (the model is left as it was); ``dump_after`` as
    for ``fuse_model`` (it sees the copy)."""
    return fuse_model(copy.deepcopy(model), dump_after=dump_after)

