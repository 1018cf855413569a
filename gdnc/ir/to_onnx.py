"""IR ``Model`` -> ONNX ModelProto / file. Files are written atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import onnx

from gdnc.errors import GdncError
from gdnc.ir.graph import Attr, Graph, Model, Value

_A = onnx.AttributeProto
EXTERNAL_DATA_THRESHOLD = 1024  # bytes; smaller tensors stay inside the .onnx file


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


def save_onnx(model: Model | onnx.ModelProto, path: str | Path, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically.

    ``external_data``: True stores tensors >= 1 KiB in ``<name>.data`` beside the file (a
    relative location), False keeps everything inline, None decides by size (> 1.5 GiB).
    """
    proto = model_to_proto(model) if isinstance(model, Model) else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = proto.ByteSize() > 1_500_000_000
    data_name = path.name + ".data"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    tmp_data = path.parent / f".{data_name}.tmp"
    try:
        if external_data:
            proto = _copy(proto)
            onnx.external_data_helper.convert_model_to_external_data(
                proto, all_tensors_to_one_file=True, location=tmp_data.name,
                size_threshold=EXTERNAL_DATA_THRESHOLD,
            )
            onnx.save_model(proto, str(tmp_path))  # writes the tensors into tmp_data
            _relocate(proto, tmp_data.name, data_name)
            onnx.save_model(proto, str(tmp_path), save_as_external_data=False)
            if tmp_data.exists():
                os.chmod(tmp_data, 0o666 & ~umask)
                os.replace(tmp_data, path.parent / data_name)
        else:
            with open(tmp_path, "wb") as fh:
                fh.write(proto.SerializeToString())
        os.replace(tmp_path, path)
    except (OSError, ValueError) as exc:
        raise GdncError(f"cannot write {path}: {exc}") from exc
    finally:
        for leftover in (tmp_path, tmp_data):
            if leftover.exists():
                leftover.unlink()
    return path


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _relocate(proto: onnx.ModelProto, old: str, new: str) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
