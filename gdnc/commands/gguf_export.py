"""``gdnc convert MODEL.gguf``: write a GGUF hybrid as an ONNX file that onnxruntime runs.

Fused (default): the graph the gdnc runtime runs (``gdnc.models.qwen_hybrid.model.build_fused``: one
multi-sequence ``GatedDeltaNet`` node per recurrent layer, any batch composition, the batch
layout given by ``cu_seqlens``), with the nodes of ``target`` emitted (native: function
bodies). Unfused: ``build_unfused`` for ONE batch of the given token counts (standard ops only).
Inputs and outputs: ``gdnc.models.qwen_hybrid.graph``; how to compute them: docs/gguf-onnx.md.
Each weight is stored in its type's ONNX form, its values exactly the file's
(``gdnc.models.onnx_weight_forms``), streamed into a data file beside the output (relative
location, ``OUT.<8 hex>.data``) one tensor at a time; both are written atomically
(``save_onnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gdnc.atomic import keeping
from gdnc.commands import command_files
from gdnc.errors import InputError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.to_onnx import external_data_files, save_onnx
from gdnc.models.onnx_weights import store_weights
from gdnc.models.qwen_hybrid.config import hybrid_config
from gdnc.models.qwen_hybrid.graph import Composition, build_unfused
from gdnc.models.qwen_hybrid.model import build_fused
from gdnc.opset.gated_delta_net import QUALIFIED_OP
from gdnc.passes.convert import TARGETS, emit_target

DEFAULT_LENGTHS = (8,)


def parse_lengths(text: str) -> tuple[int, ...]:
    """``"5,3"`` -> (5, 3): the token counts of the sequences of one batch."""
    try:
        lengths = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"--lengths: {text!r} is not a comma-separated list of integers") from None
    _check_lengths(lengths)
    return lengths


def _check_lengths(lengths: tuple[int, ...]) -> None:
    if not lengths or min(lengths) < 1:
        raise InputError(f"lengths {list(lengths)}: need >= 1 sequence of >= 1 token each")


def export_gguf(path: str | Path, output: str | Path, *, unfused: bool,
                lengths: tuple[int, ...] = DEFAULT_LENGTHS, target: str = "native") -> dict[str, Any]:
    """Write the GGUF hybrid ``path`` as ONNX to ``output`` (weights in a data file beside it);
    returns a small report (architecture, node counts, composition, files)."""
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    lengths = tuple(int(n) for n in lengths)
    if unfused:
        _check_lengths(lengths)
    src, dst = Path(path), Path(output)
    inputs = command_files.check(models=[src], outputs=[dst])
    f = GgufFile(src)
    cfg = hybrid_config(f)
    model = build_unfused(f, Composition(lengths), cfg) if unfused else build_fused(f, cfg)
    weights = store_weights(f, model)  # first: the opset it raises is the function bodies' too
    if not unfused:
        emit_target(model, target)
    with keeping(inputs):
        save_onnx(model, dst, external_data=True, bound=weights)
    ops = model.graph.op_histogram()
    data = external_data_files(dst)
    return {
        "architecture": cfg.arch,
        "fused": not unfused,
        "target": None if unfused else target,
        "composition": list(lengths) if unfused else None,
        "nodes": len(model.graph),
        "gated_delta_net_nodes": ops.get(QUALIFIED_OP, 0),
        "recurrent_layers": sum(cfg.recurrent),
        "layers": cfg.n_layer,
        "output": str(dst),
        "external_data": str(data[0]) if data else None,
    }
