"""Structural and type checks of an ONNX ModelProto, run before anything uses it.

``check_structure(proto)``: text fields are UTF-8 and names printable; the header (ir_version,
opsets) is in range; every graph (subgraphs too, with the enclosing names visible) has unique
names, no node without an op, attributes of known types that the op's schema allows, value
types onnx defines. ``check_types(proto)``: onnx's strict type inference accepts the model
(tensor data must be loaded). Each failure is a one-line ``ModelLoadError`` / ``GraphError``.
"""

from __future__ import annotations

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gdnc.errors import GraphError, ModelLoadError, first_line
from gdnc.frontends.onnx_external import element_count

_A = onnx.AttributeProto
_ATTR_TYPES = frozenset(_A.AttributeType.values()) - {_A.UNDEFINED}
_ELEM_TYPES = frozenset(onnx.TensorProto.DataType.values())
_SCHEMA_ATTR_TYPES = {getattr(onnx.defs.OpSchema.AttrType, name): code  # schema's enum -> proto's
                      for name, code in _A.AttributeType.items()
                      if hasattr(onnx.defs.OpSchema.AttrType, name)}
_TEXT, _MESSAGE = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
MAX_MODEL_BYTES = 2 << 30  # protobuf's limit on one message; larger models keep external data
TYPE_CHECK_INLINE_BYTES = 4096  # larger initializers reach onnx's inference as typed inputs only


def check_structure(proto: onnx.ModelProto) -> None:
    """Strings, header and every graph of ``proto`` (module docstring)."""
    _check_strings(proto)
    _check_header(proto)
    _check_graph(proto.graph, {"" if o.domain == "ai.onnx" else o.domain: o.version
                               for o in proto.opset_import})


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


def check_types(proto: onnx.ModelProto) -> None:
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
        reason = first_line(exc).replace("[ShapeInferenceError] Inference error(s): ", "")
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
