"""IR ``Model`` -> ONNX ModelProto / file (written atomically, see ``save_onnx``)."""

from __future__ import annotations

import glob
import math
import re
import secrets
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from gdnc import progress
from gdnc.atomic import Replacement, writes_in_place
from gdnc.errors import GdncError
from gdnc.ir.graph import Attr, Graph, Model, Value

_A = onnx.AttributeProto
EXTERNAL_DATA_THRESHOLD = 1024  # bytes; smaller tensors stay inside the .onnx file
Produce = Callable[[], np.ndarray]  # the values of a bound input (``save_onnx``)
Source = tuple[onnx.TensorProto, Callable[[], bytes | memoryview]]  # a tensor and its bytes


def _set_fields(**fields: Any) -> dict[str, Any]:
    """Only the non-default fields: proto2 records presence, so "" must stay unset."""
    return {k: v for k, v in fields.items() if v}


def model_to_proto(model: Model) -> onnx.ModelProto:
    proto = onnx.ModelProto(**_set_fields(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    ))
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(**_set_fields(domain=domain, version=version))
    proto.graph.CopyFrom(graph_to_proto(model.graph))
    for key, val in model.metadata_props:
        proto.metadata_props.add(key=key, value=val)
    proto.functions.extend(model.functions)
    proto.training_info.extend(model.training_info)
    proto.configuration.extend(model.configuration)
    return proto


def proto_with_value_info(model: Model) -> onnx.ModelProto:
    """``model_to_proto`` that also lists the type and shape of every node output the IR knows
    (the IR's own ``value_info`` names only those the source file listed)."""
    proto = model_to_proto(model)
    g = model.graph
    listed = set(g.inputs) | set(g.outputs) | set(g.value_info)
    proto.graph.value_info.extend(
        value_to_proto(v) for name, v in g.values.items()
        if name not in listed and g.producer(name) is not None and (v.dtype or v.shape is not None))
    return proto


def value_to_proto(val: Value) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(**_set_fields(name=val.name, doc_string=val.doc_string))
    for key, text in val.metadata_props:
        vi.metadata_props.add(key=key, value=text)
    if val.type_proto is not None:
        vi.type.CopyFrom(val.type_proto)
        return vi
    tt = vi.type.tensor_type
    tt.elem_type = val.dtype
    if val.shape is not None:
        tt.shape.SetInParent()
        for d in val.shape:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    return vi


def graph_to_proto(g: Graph) -> onnx.GraphProto:
    gp = onnx.GraphProto(**_set_fields(name=g.name, doc_string=g.doc_string))
    for _, node in g.nodes():
        np_ = gp.node.add(**_set_fields(
            op_type=node.op_type, domain=node.domain, name=node.name,
            doc_string=node.doc_string, overload=node.overload,
        ))
        np_.input.extend(node.inputs)
        np_.output.extend(node.outputs)
        for name, attr in node.attrs.items():
            np_.attribute.append(attr_to_proto(name, attr))
        for key, val in node.metadata_props:
            np_.metadata_props.add(key=key, value=val)
    gp.input.extend(value_to_proto(g.value(n)) for n in g.inputs)
    gp.output.extend(value_to_proto(g.value(n)) for n in g.outputs)
    gp.value_info.extend(value_to_proto(g.values[n]) for n in g.value_info if n in g.values)
    gp.initializer.extend(g.initializers.values())
    gp.sparse_initializer.extend(g.sparse_initializers)
    gp.quantization_annotation.extend(g.quantization_annotation)
    for key, val in g.metadata_props:
        gp.metadata_props.add(key=key, value=val)
    return gp


def attr_to_proto(name: str, attr: Attr) -> onnx.AttributeProto:
    ap = onnx.AttributeProto(**_set_fields(name=name, doc_string=attr.doc_string))
    ap.type = attr.type  # type: ignore[assignment]
    if attr.ref_attr_name:
        ap.ref_attr_name = attr.ref_attr_name
        return ap
    kind, v = attr.type, attr.value
    if kind == _A.FLOAT:
        ap.f = v
    elif kind == _A.INT:
        ap.i = v
    elif kind == _A.STRING:
        ap.s = v.encode("utf-8", "surrogateescape")
    elif kind == _A.TENSOR:
        ap.t.CopyFrom(v)
    elif kind == _A.GRAPH:
        ap.g.CopyFrom(graph_to_proto(v))
    elif kind == _A.FLOATS:
        ap.floats.extend(v)
    elif kind == _A.INTS:
        ap.ints.extend(v)
    elif kind == _A.STRINGS:
        ap.strings.extend(s.encode("utf-8", "surrogateescape") for s in v)
    elif kind == _A.TENSORS:
        ap.tensors.extend(v)
    elif kind == _A.GRAPHS:
        ap.graphs.extend(graph_to_proto(sub) for sub in v)
    elif kind == _A.SPARSE_TENSOR:
        ap.sparse_tensor.CopyFrom(v)
    elif kind == _A.SPARSE_TENSORS:
        ap.sparse_tensors.extend(v)
    elif kind == _A.TYPE_PROTO:
        ap.tp.CopyFrom(v)
    elif kind == _A.TYPE_PROTOS:
        ap.type_protos.extend(v)
    return ap


def save_onnx(model: Model | onnx.ModelProto, path: str | Path, *, external_data: bool | None = None,
              bound: Mapping[str, Produce] | None = None) -> Path:
    """Write ``model`` to ``path`` through ``gdnc.atomic.Replacement``: whenever the writing
    stops (an error, SIGINT, SIGKILL), ``path`` is the previous model, data file included, or
    the new one, complete.

    ``external_data``: True stores tensors >= 1 KiB in a data file beside ``path`` named for
    this write (``<name>.<8 hex>.data``, a relative location), False keeps everything inline,
    None decides by size (> 1.5 GiB); a stream (``/dev/stdout``, a FIFO) gets everything
    inline. The data file goes into place before the model that refers to it; once the model
    is in place, the data file of the previous model is removed if it is one of these (same
    folder, that naming), not the new one, and no input of the run (``gdnc.atomic.keeping``).

    ``bound`` names graph inputs to write as initializers instead (of the type and the shape,
    all ints, the input declares), each with a function making its values: called once each,
    one after another while the file is written, the array written and let go (every bound
    tensor goes to the data file, whatever its size). So a model's weights need never all be
    in memory, nor ever in the ModelProto.
    """
    path = Path(path)
    with progress.step(f"writing {path.name}"):
        _save(model, path, external_data, bound or {})
    return path


def _save(model: Model | onnx.ModelProto, path: Path, external_data: bool | None,
          bound: Mapping[str, Produce]) -> None:
    proto = model_to_proto(model) if isinstance(model, Model) else model
    if proto is model and bound:  # the caller's message stays as it was
        proto = _copy(proto)
    placeholders = _bind(proto, bound)
    if external_data is None:
        external_data = proto.ByteSize() + sum(_nbytes(t) for t in placeholders) > 1_500_000_000
    external_data = external_data and not writes_in_place(path)  # no data file beside a stream
    if proto is model and external_data:
        proto = _copy(proto)
    sources: list[Source] = [(t, _producer(t, bound[t.name])) for t in placeholders]
    data = None
    if external_data:
        data = _new_data_file(path)
        sources = [(t, partial(_raw_data, t)) for t in _mark_external(proto, data.name)] + sources
        data = data if sources else None
    else:
        for tensor, produce in sources:
            tensor.raw_data = bytes(produce())
    with Replacement(path, new_files=[] if data is None else [data]) as rep:
        rep.remove_on_commit(*(f for f in _own_data_files(path) if f != data))
        if data is not None:
            _write_external(sources, rep.temp(data), data.name)
        try:
            serialized = proto.SerializeToString()
        except ValueError as exc:  # over protobuf's 2 GiB
            raise GdncError(f"cannot write {path}: {exc}") from exc
        with rep.open(path) as fh:
            fh.write(serialized)


def _bind(proto: onnx.ModelProto, bound: Mapping[str, Produce]) -> list[onnx.TensorProto]:
    """Turn the graph inputs of ``proto`` named in ``bound`` into initializers holding no data
    yet (their type and shape declared); those initializers."""
    inputs = {vi.name: vi for vi in proto.graph.input}
    unknown = [name for name in bound if name not in inputs]
    if unknown:
        raise GdncError(f"cannot bind {unknown[0]!r}: the model has no such input")
    kept = [vi for vi in proto.graph.input if vi.name not in bound]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    placeholders = []
    for name in bound:
        tensor_type = inputs[name].type.tensor_type
        dims = tensor_type.shape.dim
        if not tensor_type.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
            raise GdncError(f"cannot bind {name!r}: its shape is not all known ints")
        placeholders.append(proto.graph.initializer.add(
            name=name, data_type=tensor_type.elem_type, dims=[d.dim_value for d in dims]))
    return placeholders


def _nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the values of ``tensor``'s type and shape."""
    return math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _producer(tensor: onnx.TensorProto, produce: Produce) -> Callable[[], memoryview]:
    """``produce``, its array checked against ``tensor``'s size and given as bytes."""
    def checked() -> memoryview:
        array = np.ascontiguousarray(produce())
        if array.nbytes != _nbytes(tensor):
            raise GdncError(f"cannot write {tensor.name!r}: {array.nbytes} bytes made for "
                            f"{_nbytes(tensor)} (type {tensor.data_type}, shape {list(tensor.dims)})")
        return array.reshape(-1).view(np.uint8).data
    return checked


def _raw_data(tensor: onnx.TensorProto) -> bytes:
    return tensor.raw_data


def external_data_files(path: str | Path) -> list[Path]:
    """The files the ONNX model at ``path`` keeps tensors in (its relative locations, beside
    it), in order of first use; [] if it has none, cannot be read, or is no regular file (a
    stream is not read: a FIFO would wait for a writer, or lose what it holds)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError):
        return []
    locations = dict.fromkeys(e.value for t in _get_all_tensors(proto) for e in t.external_data
                              if e.key == "location")
    return [path.parent / loc for loc in locations]


def _own_data_name(path: Path) -> re.Pattern[str]:
    return re.compile(re.escape(path.name) + r"\.[0-9a-f]{8}\.data")


def _own_data_files(path: Path) -> list[Path]:
    """The data files that the model now at ``path`` uses and that ``save_onnx`` wrote."""
    own = _own_data_name(path)
    if not any(own.fullmatch(p.name) for p in path.parent.glob(glob.escape(path.name) + ".*.data")):
        return []  # spares reading the old model
    return [f for f in external_data_files(path) if f == path.parent / f.name and own.fullmatch(f.name)]


def _new_data_file(path: Path) -> Path:
    """A data file name for this write of ``path`` that is not in use."""
    while True:
        data = path.with_name(f"{path.name}.{secrets.token_hex(4)}.data")
        if not data.exists():
            return data


def _mark_external(proto: onnx.ModelProto, location: str) -> list[onnx.TensorProto]:
    """Mark the initializers of ``proto`` holding >= 1 KiB of raw data as kept in ``location``;
    those tensors."""
    onnx.external_data_helper.convert_model_to_external_data(
        proto, all_tensors_to_one_file=True, location=location, size_threshold=EXTERNAL_DATA_THRESHOLD)
    return [t for t in _get_all_tensors(proto) if uses_external_data(t) and t.HasField("raw_data")]


def _write_external(sources: list[Source], file: Path, location: str) -> None:
    """Write the bytes of each tensor (from its function, called then and let go) into ``file``,
    one after another, each tensor then pointing at its bytes in ``location`` (raw data
    cleared)."""
    with open(file, "wb") as fh:
        for tensor, produce in sources:
            offset = fh.tell()
            fh.write(produce())
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", offset), ("length", fh.tell() - offset)):
                tensor.external_data.add(key=key, value=str(value))


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out
