"""Cleanup rules: identities, transpose composition, and dead-code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.ir.graph import Graph, Node, make_attrs
from gdnc.opset.gated_delta_net import DOMAIN
from gdnc.passes.patterns import op_is, producer, static_shape

_SIDE_EFFECT_FREE_DOMAINS = ("", "ai.onnx", DOMAIN, "com.microsoft")


def _shape_unchanged(g: Graph, node: Node) -> bool:
    before = static_shape(g, node.inputs[0])
    return before is not None and before == static_shape(g, node.outputs[0])


@dataclass(frozen=True)
class IdentityLike:
    """Identity, Dropout without mask, Cast to the same type, same-shape Reshape/Expand."""

    name: str = "identity-like"
    ops: tuple[str, ...] = ("Identity", "Cast", "Reshape", "Expand", "Dropout", "Transpose")

    def apply(self, g: Graph, nid: int) -> bool:
        node = g.node(nid)
        if not op_is(node, *self.ops) or not node.inputs or not node.inputs[0]:
            return False
        src = node.inputs[0]
        if node.op_type == "Cast":
            same = g.value(src).dtype != 0 and g.value(src).dtype == node.attr("to")
        elif node.op_type in ("Reshape", "Expand"):
            same = _shape_unchanged(g, node)
        elif node.op_type == "Transpose":
            perm = node.attr("perm")
            same = perm is not None and list(perm) == sorted(perm)
        elif node.op_type == "Dropout":
            same = len(node.outputs) == 1 or not node.outputs[1]
        else:
            same = True
        return same and g.bypass(nid, node.outputs[0], src)


@dataclass(frozen=True)
class ComposeTransposes:
    """Transpose(Transpose(x, p), q) -> Transpose(x, p[q])."""

    name: str = "compose-transposes"
    ops: tuple[str, ...] = ("Transpose",)

    def apply(self, g: Graph, nid: int) -> bool:
        node = g.node(nid)
        inner = producer(g, node.inputs[0], "Transpose")
        if inner is None or node.attr("perm") is None or inner.attr("perm") is None:
            return False
        p, q = list(inner.attr("perm")), list(node.attr("perm"))
        node.attrs.update(make_attrs(perm=[p[i] for i in q]))
        g.set_input(nid, 0, inner.inputs[0])
        return True


def dead_code_elimination(g: Graph) -> int:
    """Remove nodes none of whose outputs is read (by a node or inside its subgraphs) or is a
    graph output, then initializers nothing reads; returns the count of nodes removed."""
    removed = 0
    for nid in reversed(g.topological_order()):
        node = g.node(nid)
        if node.domain not in _SIDE_EFFECT_FREE_DOMAINS:
            continue
        if any(o and (g.consumers(o) or g.is_graph_output(o)) for o in node.outputs):
            continue
        g.remove_node(nid)
        removed += 1
    live = {name for nid in g.node_ids() for name in g.reads(nid)} | set(g.outputs)
    for name in [n for n in g.initializers if n not in live]:
        del g.initializers[name]
    g.value_info = [v for v in g.value_info if v in live or g.producer(v) is not None]
    return removed


CLEANUP_RULES = [IdentityLike(), ComposeTransposes()]

