"""The IR: a networkx DiGraph of op nodes with typed values, initializers and subgraphs.

Nodes are integer ids in ``Graph.nx`` (a ``networkx.DiGraph``); an edge ``a -> b`` means a
value produced by ``a`` is read by ``b``, directly or from inside one of ``b``'s subgraphs
(an ``If`` branch, a ``Loop``/``Scan`` body): a node's *implicit inputs*, the enclosing-scope
names its subgraphs read, count as its reads everywhere (uses, order, liveness). A node's
subgraphs are complete when it is added; the enclosing graph's edits rename inside them.
Values are referred to by name; graph inputs, initializers and values of an enclosing graph
have no producer. The graph keeps every node's original position so a topological order
stays as close to the source order as possible, which makes ONNX -> IR -> ONNX round trips
byte-identical.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from gdnc.errors import GraphError

Dim = int | str | None
Shape = tuple[Dim, ...]


@dataclass
class Value:
    """A named tensor: ONNX elem type (``onnx.TensorProto.FLOAT`` ...) and shape.

    ``shape`` is None when the rank is unknown; a dim is an int, a symbolic name or None.
    Non-tensor values (sequences, optionals) keep their ``type_proto`` verbatim.
    """

    name: str
    dtype: int = 0
    shape: Shape | None = None
    type_proto: onnx.TypeProto | None = None
    doc_string: str = ""
    metadata_props: list[tuple[str, str]] = field(default_factory=list)

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape when every dim is a known int, else None."""
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return tuple(int(d) for d in self.shape)  # type: ignore[arg-type]


@dataclass
class Attr:
    """One attribute: ONNX attribute type, decoded value, and ``ref_attr_name`` if any.

    Values: FLOAT float, INT int, STRING str, TENSOR ``onnx.TensorProto``, GRAPH ``Graph``,
    FLOATS/INTS/STRINGS lists, TENSORS list of protos, GRAPHS list of ``Graph``; sparse tensors
    and type protos stay protos.
    """

    type: int
    value: Any
    ref_attr_name: str = ""
    doc_string: str = ""


@dataclass
class Node:
    """An op application. ``inputs`` may hold "" for an omitted optional input."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    domain: str = ""
    attrs: dict[str, Attr] = field(default_factory=dict)
    name: str = ""
    doc_string: str = ""
    overload: str = ""
    metadata_props: list[tuple[str, str]] = field(default_factory=list)

    def attr(self, name: str, default: Any = None) -> Any:
        """Decoded attribute value (TENSOR as numpy array), or ``default``."""
        a = self.attrs.get(name)
        if a is None:
            return default
        if a.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(a.value)
        return a.value

    def attrs_have_graph(self) -> bool:
        return bool(self.subgraphs())

    def subgraphs(self) -> list[Graph]:
        """The graphs of its GRAPH and GRAPHS attributes, in attribute order."""
        return [sub for a in self.attrs.values() if a.type in _GRAPH_KINDS for sub in _subgraphs(a)]

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type


_GRAPH_KINDS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_ATTR_KINDS: dict[type, int] = {
    float: onnx.AttributeProto.FLOAT,
    int: onnx.AttributeProto.INT,
    str: onnx.AttributeProto.STRING,
}


def make_attrs(**kwargs: Any) -> dict[str, Attr]:
    """Attrs from plain python values: int, float, str, lists of those, numpy arrays."""
    out: dict[str, Attr] = {}
    for key, val in kwargs.items():
        if isinstance(val, bool):
            val = int(val)
        if isinstance(val, np.ndarray):
            out[key] = Attr(onnx.AttributeProto.TENSOR, numpy_helper.from_array(val))
        elif isinstance(val, (list, tuple)):
            kind = _ATTR_KINDS[type(val[0])] if val else onnx.AttributeProto.INTS
            plural: dict[int, int] = {onnx.AttributeProto.FLOAT: onnx.AttributeProto.FLOATS,
                      onnx.AttributeProto.INT: onnx.AttributeProto.INTS,
                      onnx.AttributeProto.STRING: onnx.AttributeProto.STRINGS}
            out[key] = Attr(plural.get(kind, kind), list(val))
        else:
            out[key] = Attr(_ATTR_KINDS[type(val)], val)
    return out


class Graph:
    """A dataflow graph. Mutate it only through its methods so producers/uses stay right."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.doc_string = ""
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.values: dict[str, Value] = {}
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.sparse_initializers: list[onnx.SparseTensorProto] = []
        self.value_info: list[str] = []
        self.quantization_annotation: list[onnx.TensorAnnotation] = []
        self.metadata_props: list[tuple[str, str]] = []
        self.nx: nx.DiGraph = nx.DiGraph()
        self._producer: dict[str, int] = {}
        self._uses: dict[str, dict[int, None]] = {}
        self._implicit: dict[int, tuple[str, ...]] = {}  # node -> outer names its subgraphs read
        self._inner_names: set[str] = set()  # names defined inside subgraphs of nodes
        self._name_counters: dict[str, int] = {}  # fresh_name: next suffix to try per hint
        self._ids = itertools.count()
        self._const_cache: dict[str, np.ndarray] = {}
        self._shared_consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    # ----------------------------------------------------------------- queries
    def node(self, nid: int) -> Node:
        return self.nx.nodes[nid]["node"]

    def has_node(self, nid: int) -> bool:
        return nid in self.nx

    def node_ids(self) -> list[int]:
        return list(self.nx.nodes)

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def producer(self, value: str) -> int | None:
        return self._producer.get(value)

    def producer_node(self, value: str) -> Node | None:
        nid = self._producer.get(value)
        return None if nid is None else self.node(nid)

    def consumers(self, value: str) -> list[int]:
        """The nodes reading ``value``, directly or from inside their subgraphs."""
        return list(self._uses.get(value, ()))

    def implicit_inputs(self, nid: int) -> tuple[str, ...]:
        """The enclosing-scope names node ``nid``'s subgraphs read (recursively), in order."""
        return self._implicit.get(nid, ())

    def reads(self, nid: int) -> list[str]:
        """Every name node ``nid`` reads: its inputs (no "") then its implicit inputs, once each."""
        inputs = self.node(nid).inputs
        implicit = self._implicit.get(nid)
        return [n for n in dict.fromkeys(inputs if implicit is None else [*inputs, *implicit]) if n]

    def outer_reads(self) -> list[str]:
        """The names this graph (as a subgraph) reads from enclosing scopes: what its nodes
        (their subgraphs included) read that it does not define, in first-use order."""
        own = self._own_names()
        return [name for name, users in self._uses.items() if users and name not in own]

    def defined_names(self) -> set[str]:
        """Every name this graph and its subgraphs define (inputs, initializers, node outputs)."""
        return self._own_names() | self._inner_names

    def _own_names(self) -> set[str]:
        names = set(self.inputs) | set(self.initializers) | set(self._producer)
        return names | {s.values.name for s in self.sparse_initializers}

    def is_graph_output(self, value: str) -> bool:
        return value in self._output_set

    @property
    def _output_set(self) -> set[str]:
        return set(self.outputs)

    def value(self, name: str) -> Value:
        """The Value record for ``name`` (created empty if the name has no type yet)."""
        val = self.values.get(name)
        if val is None:
            val = self.values[name] = Value(name)
        return val

    def const_value(self, name: str) -> np.ndarray | None:
        """numpy value of an initializer or a ``Constant`` node output, else None."""
        if name in self._const_cache:
            return self._const_cache[name]
        arr: np.ndarray | None = None
        if name in self.initializers:
            arr = numpy_helper.to_array(self.initializers[name])
        else:
            nid = self._producer.get(name)
            if nid is not None:
                node = self.node(nid)
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                    arr = _constant_node_value(node)
        if arr is not None:
            self._const_cache[name] = arr
        return arr

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for nid in self.nx.nodes:
            op = self.node(nid).qualified_op
            hist[op] = hist.get(op, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    # ----------------------------------------------------------------- edits
    def add_node(self, node: Node, position: float | None = None) -> int:
        """Insert ``node``; ``position`` orders it among nodes (default: after all)."""
        nid = next(self._ids)
        for out in node.outputs:
            if out and out in self._producer:
                raise GraphError(f"value {out!r} would have two producers")
        self.nx.add_node(nid, node=node, pos=float(nid) if position is None else position)
        for out in node.outputs:
            if out:
                self._producer[out] = nid
                self._const_cache.pop(out, None)
                for user in self._uses.get(out, ()):
                    self.nx.add_edge(nid, user)
        for name in node.inputs:
            if name:
                self._add_use(name, nid)
        self._track_subgraphs(nid)
        return nid

    def _track_subgraphs(self, nid: int) -> None:
        """Record node ``nid``'s implicit inputs as uses, and the names its subgraphs define."""
        subs = self.node(nid).subgraphs()
        if not subs:
            return
        implicit = tuple(dict.fromkeys(n for sub in subs for n in sub.outer_reads()))
        self._implicit[nid] = implicit
        for name in implicit:
            self._add_use(name, nid)
        for sub in subs:
            self._inner_names |= sub.defined_names()

    def position(self, nid: int) -> float:
        return self.nx.nodes[nid]["pos"]

    def remove_node(self, nid: int) -> None:
        node = self.node(nid)
        for name in self.reads(nid):
            self._uses.get(name, {}).pop(nid, None)
        self._implicit.pop(nid, None)
        for out in node.outputs:
            if out and self._producer.get(out) == nid:
                del self._producer[out]
                self._const_cache.pop(out, None)
        self.nx.remove_node(nid)

    def remove_nodes(self, nids: Iterable[int]) -> None:
        for nid in list(nids):
            if nid in self.nx:
                self.remove_node(nid)

    def set_input(self, nid: int, index: int, name: str) -> None:
        node = self.node(nid)
        old = node.inputs[index]
        node.inputs[index] = name
        if old:
            self._drop_use_if_unread(old, nid)
        if name:
            self._add_use(name, nid)

    def _drop_use_if_unread(self, name: str, nid: int) -> None:
        """Forget that node ``nid`` reads ``name`` (and the edge from its producer) once it
        no longer does."""
        reads = self.reads(nid)
        if name in reads:
            return
        self._uses.get(name, {}).pop(nid, None)
        src = self._producer.get(name)
        if src is not None and not any(o in reads for o in self.node(src).outputs):
            self.nx.remove_edge(src, nid)

    def replace_all_uses(self, old: str, new: str) -> None:
        """Redirect every reader of ``old`` (nodes, their subgraphs and graph outputs) to ``new``."""
        for nid in list(self._uses.get(old, ())):
            node = self.node(nid)
            for i, name in enumerate(node.inputs):
                if name == old:
                    self.set_input(nid, i, new)
            if old in self.implicit_inputs(nid):
                self._rename_outer(nid, old, new)
        self.outputs = [new if o == old else o for o in self.outputs]

    def _rename_outer(self, nid: int, old: str, new: str) -> None:
        """Make node ``nid``'s subgraphs read the enclosing-scope value ``new`` where they read
        ``old`` (a subgraph that defines ``old`` itself keeps it)."""
        subs = self.node(nid).subgraphs()
        for sub in subs:
            if old not in sub._own_names():
                sub.replace_all_uses(old, new)
        self._implicit[nid] = tuple(dict.fromkeys(n for sub in subs for n in sub.outer_reads()))
        self._drop_use_if_unread(old, nid)
        if new in self._implicit[nid]:
            self._add_use(new, nid)

    def rename_value(self, old: str, new: str) -> None:
        """Give the value ``old`` (produced by a node) the unused name ``new`` everywhere."""
        if self._taken(new):
            raise GraphError(f"cannot rename {old!r} to {new!r}: the name is taken")
        nid = self._producer.pop(old)
        node = self.node(nid)
        node.outputs = [new if o == old else o for o in node.outputs]
        self._producer[new] = nid
        uses = self._uses.pop(old, {})
        self._uses.setdefault(new, {}).update(uses)
        for user in uses:
            unode = self.node(user)
            unode.inputs = [new if i == old else i for i in unode.inputs]
            if old in self.implicit_inputs(user):
                self._rename_outer(user, old, new)
        self.outputs = [new if o == old else o for o in self.outputs]
        val = self.values.pop(old, None)
        if val is not None:
            val.name = new
            self.values[new] = val
        self.value_info = [new if v == old else v for v in self.value_info]
        self._const_cache.pop(old, None)

    def bypass(self, nid: int, output: str, replacement: str) -> bool:
        """Remove node ``nid`` whose ``output`` equals ``replacement``; False if impossible.

        Readers of ``output`` read ``replacement`` instead. A graph output keeps its name: the
        replacement's producer is renamed when it can be.
        """
        node = self.node(nid)
        if any(o and o != output and (self._uses.get(o) or o in self.outputs) for o in node.outputs):
            return False
        if output in self.outputs:
            if (
                self._producer.get(replacement) is None
                or replacement in self.outputs
                or replacement in self.inputs
            ):
                return False
            self.remove_node(nid)
            self.rename_value(replacement, output)
            return True
        self.replace_all_uses(output, replacement)
        self.remove_node(nid)
        return True

    def fresh_name(self, hint: str) -> str:
        """A value/node name not used in this graph or its subgraphs: ``hint``, else ``hint_K``
        for the next K not tried for this hint (amortized constant time per call)."""
        base = hint or "v"
        k = self._name_counters.get(base, 0)
        name = f"{base}_{k}" if k else base
        while name in self.values or self._taken(name):
            k += 1
            name = f"{base}_{k}"
        self._name_counters[base] = k + 1
        self.values[name] = Value(name)
        return name

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        """Add a constant tensor; returns its (possibly uniquified) name."""
        if self._taken(name):
            name = self.fresh_name(name)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        self.values[name] = Value(name, _elem_type(np.asarray(array)), tuple(np.shape(array)))
        self._const_cache.pop(name, None)
        return name

    def _taken(self, name: str) -> bool:
        """Whether ``name`` is defined here (input, initializer, node output) or in a subgraph."""
        return name in self._producer or name in self.initializers or name in self._inner_names \
            or name in self.inputs

    def constant(self, array: np.ndarray, hint: str = "const") -> str:
        """An initializer holding ``array``, shared with an identical one made before; a new
        one is named by ``fresh_name(hint)`` (so no name handed out before, defined or not)."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self._shared_consts.get(key)
        if name is None or name not in self.initializers:
            name = self._shared_consts[key] = self.add_initializer(self.fresh_name(hint), array)
        return name

    def _add_use(self, name: str, nid: int) -> None:
        self._uses.setdefault(name, {})[nid] = None
        src = self._producer.get(name)
        if src is not None:
            self.nx.add_edge(src, nid)

    # ----------------------------------------------------------------- order
    def topological_order(self) -> list[int]:
        """Node ids in a topological order that keeps the recorded positions where possible."""
        try:
            return list(nx.lexicographical_topological_sort(self.nx, key=self.position))
        except nx.NetworkXUnfeasible as exc:
            cycle = nx.find_cycle(self.nx)
            ops = " -> ".join(self.node(a).name or self.node(a).op_type for a, _ in cycle)
            raise GraphError(f"graph has a cycle: {ops}") from exc

    def nodes(self) -> Iterator[tuple[int, Node]]:
        """(id, node) pairs in topological order."""
        for nid in self.topological_order():
            yield nid, self.node(nid)

    def check(self, outer_scope: Iterable[str] = ()) -> None:
        """Raise GraphError on a dangling input or output name or on a cycle, here and in every
        subgraph (which sees ``outer_scope``, the names its enclosing graphs define before it
        but may not pass one of them straight out as an output, as onnx and onnxruntime say)."""
        own = set(self.inputs) | set(self.initializers) | {s.values.name for s in self.sparse_initializers}
        known = own | set(outer_scope)
        for _, node in self.nodes():
            for name in node.inputs:
                if name and name not in known:
                    raise GraphError(
                        f"node {node.name or node.op_type} reads {name!r}, which nothing produces"
                    )
            own.update(o for o in node.outputs if o)
            known.update(o for o in node.outputs if o)
            for sub in node.subgraphs():
                sub.check(known)
        for out in self.outputs:
            if out in known and out not in own:
                raise GraphError(f"subgraph {self.name!r} outputs {out!r} of an enclosing graph",
                                 fix="put an Identity node between them")
            if out not in known:
                raise GraphError(f"graph output {out!r} is not produced")


def _subgraphs(attr: Attr) -> list[Graph]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.value]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.value)
    return []


def _elem_type(arr: np.ndarray) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(arr.dtype))


def _constant_node_value(node: Node) -> np.ndarray | None:
    for key, a in node.attrs.items():
        if a.ref_attr_name:
            return None
        if key == "value":
            return numpy_helper.to_array(a.value)
        if key == "value_float":
            return np.array(a.value, dtype=np.float32)
        if key == "value_floats":
            return np.array(a.value, dtype=np.float32)
        if key == "value_int":
            return np.array(a.value, dtype=np.int64)
        if key == "value_ints":
            return np.array(a.value, dtype=np.int64)
    return None


@dataclass
class Model:
    """A graph plus the model-level fields of an ONNX ModelProto (kept for round trips)."""

    graph: Graph
    opset_imports: dict[str, int] = field(default_factory=lambda: {"": 17})
    ir_version: int = 8
    producer_name: str = "gdnc"
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: list[tuple[str, str]] = field(default_factory=list)
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    training_info: list[onnx.TrainingInfoProto] = field(default_factory=list)
    configuration: list[onnx.DeviceConfigurationProto] = field(default_factory=list)
    external_data: bool = False  # the source file kept tensors in external data files

    def opset(self, domain: str) -> int:
        key = "" if domain == "ai.onnx" else domain
        return self.opset_imports.get(key, 1)
