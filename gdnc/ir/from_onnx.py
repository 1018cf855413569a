"""ONNX -> IR, lossless (the inverse of ``gdnc.ir.to_onnx``): a ModelProto already checked by
the frontend becomes a ``Model``; initializers stay TensorProtos, subgraphs become ``Graph``s."""

from __future__ import annotations

import onnx

from gdnc.ir.graph import Attr, Graph, Model, Node, Value

_A = onnx.AttributeProto


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
