"""ONNX frontend: a .onnx file, checked, -> IR ``Model`` (the conversion is ``gdnc.ir.from_onnx``)."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from gdnc import progress
from gdnc.errors import GdncError, ModelLoadError, first_line
from gdnc.frontends.onnx_checks import MAX_MODEL_BYTES, check_structure, check_types
from gdnc.frontends.onnx_external import load_tensor_data
from gdnc.ir.from_onnx import model_from_proto
from gdnc.ir.graph import Model


def load_onnx(path: str | Path) -> Model:
    """Read a binary ONNX file into the IR, external data resolved in the file's folder.

    Anything malformed is refused before it is used, with one ``ModelLoadError`` or
    ``GraphError`` line that starts with the path and names the problem: an unreadable,
    empty or oversized file, a protobuf that does not decode, text that is not UTF-8, names
    that are not printable, no graph, an ir_version or opset outside what onnx knows,
    tensors whose data does not match their declaration or whose external data is not a
    plain byte range of a regular file inside the folder (see ``onnx_external``), duplicate
    names, nodes without an op, attributes of unknown type or that the op's schema does not
    allow, value types onnx does not define, dangling names, cycles and graph outputs
    nothing produces (in every subgraph too, with the enclosing graph's names visible), and
    graphs onnx's strict type inference refuses. The structure is checked first, then
    tensor data (external data read only once all of it is known to be sound), then types
    (which need the small tensors).
    """
    path = Path(path)
    with progress.step(f"reading {path.name}"):
        return _load(path)


def _load(path: Path) -> Model:
    try:
        proto = _parse(path)
        check_structure(proto)
        model = model_from_proto(proto)
        model.graph.check()
        external = load_tensor_data(proto, path.parent.resolve())
        check_types(proto)
    except GdncError as exc:
        raise type(exc)(f"{path}: {exc}", fix=exc.fix) from None
    model.external_data = bool(external)
    return model


def _parse(path: Path) -> onnx.ModelProto:
    """The ModelProto in ``path`` (binary protobuf), tensors' external data not yet read."""
    if not path.is_file():
        raise ModelLoadError("no such file")
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelLoadError(f"{size} bytes is over protobuf's 2 GiB limit for one model")
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file ({exc.strerror})") from None
    if not data:
        raise ModelLoadError("the file is empty, not an ONNX model")
    try:
        return onnx.ModelProto.FromString(data)
    except DecodeError as exc:
        reason = first_line(exc)
        if "MaxDepth" in reason:
            reason = "messages nested deeper than protobuf's limit"
        raise ModelLoadError(f"not a readable ONNX model ({reason})") from None
