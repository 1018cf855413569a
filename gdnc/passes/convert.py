"""Fuse a model and emit a target (what ``gdnc convert`` does to an ONNX graph), or report what
would fuse on a copy (``gdnc inspect``)."""

from __future__ import annotations

import copy
from collections.abc import Callable

from gdnc.errors import InputError
from gdnc.ir.graph import Model
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


def inspect_model(
    model: Model, *, dump_after: Callable[[str, Model], None] | None = None
) -> ConversionReport:
    """What ``convert`` would do, on a copy (the model is left as it was); ``dump_after`` as
    for ``fuse_model`` (it sees the copy)."""
    return fuse_model(copy.deepcopy(model), dump_after=dump_after)

