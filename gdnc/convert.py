"""Library entry points behind ``gdnc convert`` / ``inspect``: load, fuse, emit, save."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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
    """Read ``src`` (ONNX), fuse, write ``dst`` atomically (and the JSON report if asked)."""
    model = load_onnx(src)
    report = convert_model(model, target=target, dump_after=dump_after)
    save_onnx(model, dst, external_data=model.external_data)
    if report_path is not None:
        write_json_atomic(report_path, report.to_json())
    return report


def inspect_model(model: Model) -> ConversionReport:
    """What ``convert`` would do, on a copy (the model is left as it was)."""
    return fuse_model(copy.deepcopy(model))


def write_json_atomic(path: str | Path, data: object) -> None:
    """Write JSON through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
