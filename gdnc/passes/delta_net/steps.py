"""Match one per-token delta-rule step around its state update ``S_new = S_dec + k ⊗ δ``."""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.ir.graph import Graph
from gdnc.passes.delta_net.recognize import contract, decay, delta, outer
from gdnc.passes.patterns import rank
from gdnc.passes.rewrite import Miss

RULE = "delta-net-step"


@dataclass(frozen=True)
class Step:
    """One token's step. Values are names; ``nodes`` are the step's private node ids."""

    prev: str
    new: str
    o: str
    q: str
    k: str
    v: str
    gate: str
    beta: str
    gate_is_log: bool
    per_key: bool
    layout: str  # "kv" or "vk"
    rank: int
    nodes: frozenset[int]


def _o_contraction(g: Graph, state: str, k_axis: int, skip: set[int]) -> tuple[str, str] | None:
    """The output read ``o = contract(state, q)`` among the readers of ``state``."""
    candidates: list[str] = []
    for nid in g.consumers(state):
        if nid in skip:
            continue
        outs = list(g.node(nid).outputs)
        for out in list(outs):
            outs.extend(o for c in g.consumers(out) for o in g.node(c).outputs)
        candidates.extend(outs)
    found = []
    for value in candidates:
        c = contract(g, value)
        if c is not None and c.state == state and c.axis == k_axis:
            found.append((value, c.vec))
    return found[0] if len(found) == 1 else None


def _step_nodes(g: Graph, roots: list[str], boundary: set[str]) -> set[int]:
    """Non-constant nodes between ``boundary`` values and ``roots``."""
    nodes: set[int] = set()
    stack = list(roots)
    while stack:
        value = stack.pop()
        if not value or value in boundary or g.const_value(value) is not None:
            continue
        nid = g.producer(value)
        if nid is None or nid in nodes:
            continue
        nodes.add(nid)
        stack.extend(g.node(nid).inputs)
    return nodes


def match_step(g: Graph, nid: int) -> Step | Miss | None:
    """A Step anchored at the Add node ``nid``; None when it is not a step's update at all."""
    add = g.node(nid)
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    new = add.outputs[0]
    r = rank(g, new)
    if r is None or r < 3:
        return None
    for dec_value, upd in (add.inputs, add.inputs[::-1]):
        out = outer(g, upd)
        if out is not None:
            break
    else:
        return None
    for k, d, layout in ((out.row, out.col, "kv"), (out.col, out.row, "vk")):
        dl = delta(g, d)
        if dl is not None:
            break
    else:
        return Miss(RULE, f"{new}: an outer-product update whose factors are not k and beta*(v - u)",
                    value=new)
    k_axis = r - 2 if layout == "kv" else r - 1
    u = contract(g, dl.u)
    if u is None:
        return Miss(RULE, f"{new}: u = {dl.u} is not a contraction of the state with k", value=new)
    if u.state != dec_value:
        return Miss(RULE, f"{new}: u reads {u.state}, not the decayed state {dec_value}", value=new)
    if u.vec != k:
        return Miss(RULE, f"{new}: u contracts the state with {u.vec}, the update uses {k}", value=new)
    if u.axis != k_axis:
        return Miss(RULE, f"{new}: u = {dl.u} sums the state over the value axis, not the key axis",
                    value=new)
    dc = decay(g, dec_value)
    if dc is None:
        return Miss(RULE, f"{new}: the state {dec_value} is not decayed by a gate", value=new)
    if dc.key_axis is not None and dc.key_axis != k_axis:
        return Miss(RULE, f"{new}: the per-key gate varies along the value axis", value=new)
    found = _o_contraction(g, new, k_axis, set())
    if found is None:
        return Miss(RULE, f"{new}: no single output read o = contract(state, q) over the key axis", value=new)
    o, q = found
    boundary = {dc.prev, q, k, dl.v, dc.gate, dl.beta}
    nodes = _step_nodes(g, [new, o], boundary)
    for sid in nodes:
        for value in g.node(sid).outputs:
            if value in (new, o):
                continue
            for reader in g.consumers(value):
                if reader not in nodes:
                    who = g.node(reader).name or g.node(reader).op_type
                    return Miss(RULE, f"{new}: intermediate {value} is also read by node {who}", value=value,
                                node=who)
            if g.is_graph_output(value):
                return Miss(RULE, f"{new}: intermediate {value} is a graph output", value=value)
    return Step(
        prev=dc.prev, new=new, o=o, q=q, k=k, v=dl.v, gate=dc.gate, beta=dl.beta,
        gate_is_log=dc.is_log, per_key=dc.key_axis is not None, layout=layout, rank=r,
        nodes=frozenset(nodes),
    )
