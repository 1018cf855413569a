"""ONNX frontend: ModelProto / .onnx file -> IR ``Model`` (lossless; see ``gdnc.ir.to_onnx``)."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from gdnc.errors import GdncError, GraphError, ModelLoadError
from gdnc.frontends.onnx_external import element_count, load_tensor_data
from gdnc.ir.graph import Attr, Graph, Model, Node, Value

_A = onnx.AttributeProto
MAX_MODEL_BYTES = 2 << 30  # protobuf's limit on one message; larger models keep external data
_ATTR_TYPES = frozenset(_A.AttributeType.values()) - {_A.UNDEFINED}
_ELEM_TYPES = frozenset(onnx.TensorProto.DataType.values())
_SCHEMA_ATTR_TYPES = {getattr(onnx.defs.OpSchema.AttrType, name): code  # schema's enum -> proto's
                      for name, code in _A.AttributeType.items()
                      if hasattr(onnx.defs.OpSchema.AttrType, name)}
_TEXT, _MESSAGE = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
TYPE_CHECK_INLINE_BYTES = 4096  # larger initializers reach onnx's inference as typed inputs only


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
    try:
        proto = _parse(path)
        _check_strings(proto)
        _check_header(proto)
        _check_graph(proto.graph, {"" if o.domain == "ai.onnx" else o.domain: o.version
                                   for o in proto.opset_import})
        model = model_from_proto(proto)
        model.graph.check()
        external = load_tensor_data(proto, path.parent.resolve())
        _check_types(proto)
    except GdncError as exc:
        raise type(exc)(f"{path}: {exc}") from None
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
        reason = _first_line(exc)
        if "MaxDepth" in reason:
            reason = "messages nested deeper than protobuf's limit"
        raise ModelLoadError(f"not a readable ONNX model ({reason})") from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, cut at ``limit`` characters."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


def _check_strings(message: Message) -> None:
    """Refuse a string field whose bytes are not UTF-8 (protobuf hands such a field over as
    ``bytes``, which nothing downstream expects), and a name, op type or other identifier
    that is not printable (a newline in an op type would split the one-line error naming
    it); doc strings and metadata values are free text. Recursive; bytes fields
    (``raw_data`` ...) are not read."""
    for field in message.DESCRIPTOR.fields:
        if field.type not in (_TEXT, _MESSAGE):
            continue
        if not field.is_repeated and field.type == _MESSAGE and not message.HasField(field.name):
            continue
        value = getattr(message, field.name)
        items = value if field.is_repeated else (value,)
        if field.type == _MESSAGE:
            for item in items:
                _check_strings(item)
            continue
        for item in items:
            if isinstance(item, bytes):
                raise ModelLoadError(f"{field.full_name} {item[:40]!r} is not UTF-8 text")
            if not (item.isprintable() or _is_free_text(field)):
                raise ModelLoadError(f"{field.full_name} {item[:40]!r} is not printable")


def _is_free_text(field: FieldDescriptor) -> bool:
    """Doc strings and metadata values may hold any text (newlines, tabs ...)."""
    return field.name == "doc_string" or field.full_name == "onnx.StringStringEntryProto.value"


def _check_header(proto: onnx.ModelProto) -> None:
    """A graph, an ir_version and opset versions onnx knows, each domain imported once."""
    if not proto.HasField("graph"):
        raise ModelLoadError("not an ONNX model: it has no graph")
    if not 1 <= proto.ir_version <= onnx.IR_VERSION:
        raise ModelLoadError(f"ir_version {proto.ir_version} is outside the 1..{onnx.IR_VERSION} "
                             f"this onnx knows")
    newest = onnx.defs.onnx_opset_version()
    seen: set[str] = set()
    for op in proto.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        if domain in seen:
            raise ModelLoadError(f"opset_import lists domain {op.domain!r} twice")
        seen.add(domain)
        if op.version < 1:
            raise ModelLoadError(f"opset_import: version {op.version} of domain {op.domain!r} "
                                 f"is not positive")
        if domain == "" and op.version > newest:
            raise ModelLoadError(f"opset_import: version {op.version} of the default domain is past "
                                 f"{newest}, the newest this onnx knows")


def _check_graph(gp: onnx.GraphProto, opsets: dict[str, int], *, main: bool = True) -> None:
    """Names defined once, nodes with an op, attributes typed and named once (as the op's
    schema says, for ops onnx defines), value types onnx defines; recursively in subgraphs.
    Dataflow is ``Graph.check``'s."""
    where = f"graph {gp.name!r}"
    if main and not gp.output:
        raise GraphError(f"{where} has no outputs")
    defined = _unique([vi.name for vi in gp.input], f"{where} lists input")
    defined |= _unique([t.name for t in gp.initializer], f"{where} defines initializer")
    defined |= {t.values.name for t in gp.sparse_initializer}
    for vi in (*gp.input, *gp.output, *gp.value_info):
        _check_value_type(vi.type, f"value {vi.name!r}")
    produced: set[str] = set()
    for i, node in enumerate(gp.node):
        label = f"node {node.name or f'#{i}'!r}"
        if not node.op_type:
            raise GraphError(f"{label} of {where} has no op_type")
        for out in filter(None, node.output):
            if out in produced:
                raise GraphError(f"value {out!r} has two producers (the second is {label})")
            if out in defined:
                raise GraphError(f"{label} writes {out!r}, already a graph input or initializer")
            produced.add(out)
        _unique([a.name for a in node.attribute], f"{label} has attribute")
        for attr in node.attribute:
            if attr.type not in _ATTR_TYPES:
                raise GraphError(f"attribute {attr.name!r} of {label} has unknown type {attr.type}")
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                _check_graph(sub, opsets, main=False)
        _check_against_schema(node, label, opsets)


def _check_against_schema(node: onnx.NodeProto, label: str, opsets: dict[str, int]) -> None:
    """For an op onnx defines at the imported opset: no attribute it does not declare, each of
    the declared type, none of its required ones missing. Other ops are left to the runtime."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in opsets or not onnx.defs.has(node.op_type, domain):
        return
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        return  # the op came later than this opset
    op = f"{node.op_type}-{schema.since_version}"
    given = {a.name: a for a in node.attribute}
    for name, attr in given.items():
        spec = schema.attributes.get(name)
        if spec is None:
            raise GraphError(f"{label} ({op}) has attribute {name!r}, which {op} does not define")
        expected = _SCHEMA_ATTR_TYPES[spec.type]
        if attr.type != expected and not attr.ref_attr_name:
            raise GraphError(f"attribute {name!r} of {label} is {_A.AttributeType.Name(attr.type)}, "
                             f"{op} takes {_A.AttributeType.Name(expected)}")
    missing = [name for name, spec in schema.attributes.items() if spec.required and name not in given]
    if missing:
        raise GraphError(f"{label} ({op}) lacks its required attribute {missing[0]!r}")


def _check_types(proto: onnx.ModelProto) -> None:
    """onnx's strict type and shape inference, which refuses mismatched element types and
    attribute values impossible for the known input shapes (a ``perm`` naming an axis the
    input lacks ...). Ops onnx does not define are skipped."""
    view = _typing_view(proto)
    if view.ByteSize() > MAX_MODEL_BYTES:
        return  # tensor attributes of external data made it too large to hand to onnx
    try:
        onnx.shape_inference.infer_shapes(view, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError,
            onnx.defs.SchemaError) as exc:
        reason = _first_line(exc).replace("[ShapeInferenceError] Inference error(s): ", "")
        raise GraphError(f"the graph does not type-check: {reason}") from None


def _typing_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` for type inference without copying its weights: main-graph initializers over
    ``TYPE_CHECK_INLINE_BYTES`` become graph inputs of their type and shape (inference reads
    the values of small, shape-like tensors only)."""
    view = onnx.ModelProto()
    _copy_fields(proto, view, skip="graph")
    _copy_fields(proto.graph, view.graph, skip="initializer")
    listed = {vi.name for vi in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.ByteSize() <= TYPE_CHECK_INLINE_BYTES:
            view.graph.initializer.append(tensor)
        elif tensor.name not in listed:
            view.graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
    return view


def _copy_fields(source: Message, target: Message, *, skip: str) -> None:
    """Copy every set field of ``source`` but ``skip`` into ``target`` (same message type)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == _MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _unique(names: list[str], what: str) -> set[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise GraphError(f"{what} {name!r} twice")
        seen.add(name)
    return seen


def _check_value_type(tp: onnx.TypeProto, what: str) -> None:
    """A tensor type's elem_type is one onnx defines (0: not known yet) and its dims >= 0."""
    if tp.HasField("tensor_type"):
        tt = tp.tensor_type
        if tt.elem_type not in _ELEM_TYPES:
            raise ModelLoadError(f"{what} has unknown elem_type {tt.elem_type}")
        element_count([d.dim_value for d in tt.shape.dim if d.HasField("dim_value")], what)


def model_from_proto(proto: onnx.ModelProto) -> Model:
    return Model(
        graph=graph_from_proto(proto.graph),
        opset_imports={op.domain: op.version for op in proto.opset_import},
        ir_version=proto.ir_version,
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=proto.model_version,
        doc_string=proto.doc_string,
        metadata_props=[(p.key, p.value) for p in proto.metadata_props],
        functions=list(proto.functions),
        training_info=list(proto.training_info),
        configuration=list(proto.configuration),
    )


def value_from_proto(vi: onnx.ValueInfoProto) -> Value:
    val = Value(vi.name, doc_string=vi.doc_string)
    val.metadata_props = [(p.key, p.value) for p in vi.metadata_props]
    if vi.type.HasField("tensor_type"):
        tt = vi.type.tensor_type
        val.dtype = tt.elem_type
        if tt.HasField("shape"):
            val.shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            )
    elif vi.HasField("type"):
        val.type_proto = onnx.TypeProto()
        val.type_proto.CopyFrom(vi.type)
    return val


def graph_from_proto(gp: onnx.GraphProto) -> Graph:
    g = Graph(gp.name)
    g.doc_string = gp.doc_string
    for vi in gp.input:
        g.values[vi.name] = value_from_proto(vi)
        g.inputs.append(vi.name)
    for vi in gp.output:
        g.values[vi.name] = value_from_proto(vi)
        g.outputs.append(vi.name)
    for vi in gp.value_info:
        g.values[vi.name] = value_from_proto(vi)
        g.value_info.append(vi.name)
    for init in gp.initializer:
        g.initializers[init.name] = init
        if init.name not in g.values:
            g.values[init.name] = Value(init.name, init.data_type, tuple(init.dims))
    g.sparse_initializers = list(gp.sparse_initializer)
    g.quantization_annotation = list(gp.quantization_annotation)
    g.metadata_props = [(p.key, p.value) for p in gp.metadata_props]
    for i, np_ in enumerate(gp.node):
        node = Node(
            op_type=np_.op_type,
            inputs=list(np_.input),
            outputs=list(np_.output),
            domain=np_.domain,
            attrs={a.name: attr_from_proto(a) for a in np_.attribute},
            name=np_.name,
            doc_string=np_.doc_string,
            overload=np_.overload,
            metadata_props=[(p.key, p.value) for p in np_.metadata_props],
        )
        g.add_node(node, position=float(i))
    return g


def attr_from_proto(a: onnx.AttributeProto) -> Attr:
    kind = a.type
    value: object
    if kind == _A.FLOAT:
        value = a.f
    elif kind == _A.INT:
        value = a.i
    elif kind == _A.STRING:
        value = a.s.decode("utf-8", "surrogateescape")
    elif kind == _A.TENSOR:
        value = a.t
    elif kind == _A.GRAPH:
        value = graph_from_proto(a.g)
    elif kind == _A.FLOATS:
        value = list(a.floats)
    elif kind == _A.INTS:
        value = list(a.ints)
    elif kind == _A.STRINGS:
        value = [s.decode("utf-8", "surrogateescape") for s in a.strings]
    elif kind == _A.TENSORS:
        value = list(a.tensors)
    elif kind == _A.GRAPHS:
        value = [graph_from_proto(sub) for sub in a.graphs]
    elif kind == _A.SPARSE_TENSOR:
        value = a.sparse_tensor
    elif kind == _A.SPARSE_TENSORS:
        value = list(a.sparse_tensors)
    elif kind == _A.TYPE_PROTO:
        value = a.tp
    elif kind == _A.TYPE_PROTOS:
        value = list(a.type_protos)
    else:
        value = None
    return Attr(kind, value, a.ref_attr_name, a.doc_string)
