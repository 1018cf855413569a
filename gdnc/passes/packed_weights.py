"""Let bound weights be read as the file holds them: ``MatMul(x, Transpose(W))`` becomes
``ai.gdnc::Linear(x, W)`` and ``Gather(W, ids, axis=0)`` becomes ``ai.gdnc::Embed(W, ids)``
(contract: ``gdnc.opset.packed_weights``) for every weight input W named by the caller.

Run last, after fusion: the fusion pass and shape inference see standard ops only."""

from __future__ import annotations

from collections.abc import Collection

from gdnc.ir.graph import Graph, Model, Node
from gdnc.opset.packed_weights import DOMAIN, EMBED, LINEAR


def _swaps_last_two(node: Node, rank: int) -> bool:
    perm = node.attr("perm")
    return perm is not None and list(perm) == [*range(rank - 2), rank - 1, rank - 2]


def _linear_inputs(g: Graph, transpose: Node) -> list[int]:
    """The MatMul nodes reading ``transpose``'s output as their second input."""
    out = transpose.outputs[0]
    return [c for c in g.consumers(out)
            if g.node(c).op_type == "MatMul" and g.node(c).domain in ("", "ai.onnx")
            and g.node(c).inputs[1] == out and g.node(c).inputs[0] != out]


def linear_reads(g: Graph, weight: str) -> list[tuple[int, int]]:
    """The reads of ``weight`` (a value of known rank >= 2) spelled ``MatMul(x, Transpose(W))``
    with the last two axes swapped (x @ W^T): (Transpose, MatMul) node id pairs."""
    rank = len(g.value(weight).shape or ())
    transposes = [nid for nid in g.consumers(weight)
                  if g.node(nid).op_type == "Transpose" and g.node(nid).domain in ("", "ai.onnx")
                  and rank >= 2 and _swaps_last_two(g.node(nid), rank)]
    return [(t, mm) for t in transposes for mm in _linear_inputs(g, g.node(t))]


def embedding_reads(g: Graph, weight: str) -> list[int]:
    """The reads of ``weight`` spelled ``Gather(W, ids, axis=0)`` (rows of W): Gather node ids."""
    return [nid for nid in g.consumers(weight)
            if g.node(nid).op_type == "Gather" and g.node(nid).domain in ("", "ai.onnx")
            and g.node(nid).inputs[0] == weight and int(g.node(nid).attr("axis", 0)) == 0]


def _replace(g: Graph, nid: int, op_type: str, inputs: list[str]) -> None:
    node = g.node(nid)
    position = g.position(nid)
    g.remove_node(nid)
    g.add_node(Node(op_type, inputs, list(node.outputs), domain=DOMAIN, name=node.name), position)


def remove_if_unread(g: Graph, nid: int) -> None:
    """Remove node ``nid`` when none of its outputs is read or a graph output."""
    if not any(g.consumers(out) or g.is_graph_output(out) for out in g.node(nid).outputs if out):
        g.remove_node(nid)


def pack_weight_reads(model: Model, weights: Collection[str]) -> int:
    """Rewrite the reads of ``weights`` (graph inputs) as above; returns the nodes rewritten.
    A Transpose left without readers is removed."""
    g = model.graph
    done = 0
    for name in weights:
        for nid in embedding_reads(g, name):
            _replace(g, nid, EMBED, [name, g.node(nid).inputs[1]])
            done += 1
        for transpose, mm in linear_reads(g, name):
            _replace(g, mm, LINEAR, [g.node(mm).inputs[0], name])
            done += 1
            remove_if_unread(g, transpose)
    if done and DOMAIN not in model.opset_imports:
        model.opset_imports[DOMAIN] = 1
    return done
