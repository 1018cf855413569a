"""The two diagrams of a layer as graphs of boxes (what to draw, not how).

Before: token 0 of sequence 0 op by op, from named input terminals to the output ``o`` and
the state S′; the other tokens of that sequence as one box; the other sequences of the layer
(GGUF batches) as one more. After: the fused node, its attributes, the same roles as terminals.
Every graph node carries a ``Box`` under the attribute "box".
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from gdnc.drawing.capture import STEP_INPUTS, ChainView, FusedView
from gdnc.drawing.symbols import LAYOUT_OPS
from gdnc.passes.delta_net import ChainInfo


@dataclass(frozen=True)
class Box:
    """A box: a bold ``title``, plain ``lines``, a small grey ``note``; ``gid`` names the title
    in the SVG (``step-op-3``) and ``gid-i`` the i-th line under it; ``kind`` picks the style
    (``figure.STYLES``)."""

    title: str
    kind: str
    lines: tuple[str, ...] = ()
    note: str = ""
    gid: str = ""


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}…{last}"


def before_diagram(chains: tuple[ChainView, ...]) -> nx.DiGraph:
    """Sequence 0's token 0 expanded, everything else of the layer collapsed."""
    chain = chains[0]
    dag = nx.DiGraph()
    made_by = {x: ("op", i) for i, box in enumerate(chain.first_step) for x in box.outputs}
    source: dict[str, tuple[str, str]] = {}
    for role in STEP_INPUTS:
        value = chain.terminals[role]
        title = "S · state in" if role == "S" else f"{role} · token 0"
        source.setdefault(value, ("in", role))
        dag.add_node(("in", role), box=Box(title, "input", note=value, gid=f"in-{role}"))
    for i, op in enumerate(chain.first_step):
        kind = "layout" if op.op in LAYOUT_OPS else "op"
        dag.add_node(("op", i), box=Box(op.op, kind, (op.label,), op.name, gid=f"step-op-{i}"))
        for x in op.inputs:
            if x not in made_by and x not in source:
                source[x] = ("in", x)
                dag.add_node(("in", x), box=Box(x, "input"))
            dag.add_edge(made_by.get(x) or source[x], ("op", i))
    o, new = chain.terminals["o"], chain.terminals["S′"]
    dag.add_node(("out", "o"), box=Box("o · token 0", "output", note=o, gid="out-o"))
    dag.add_edge(made_by[o], ("out", "o"))
    steps = len(chain.step_ops)
    if steps == 1:
        dag.add_node(("out", "S"), box=Box("S′ · final state", "output", note=new, gid="out-S"))
        dag.add_edge(made_by[new], ("out", "S"))
    else:
        rest = chain.ops - chain.step_ops[0]
        per = sorted(set(chain.step_ops[1:]))
        more = f"× {steps - 1} more step{'s' if steps > 2 else ''}, {rest} ops"
        each = f"{per[0]} ops per step" if len(per) == 1 else f"{per[0]}–{per[-1]} ops per step"
        tokens = "token 1" if steps == 2 else f"tokens {_span(1, steps - 1)}"
        dag.add_node("more", box=Box(more, "collapsed", (f"{tokens}, {each}",), gid="more-steps"))
        dag.add_node(("in", "rest"), box=Box(f"q, k, v, g, β · {tokens}", "input"))
        dag.add_node(("out", "rest"), box=Box(f"o · {tokens}", "output"))
        dag.add_node(("out", "S"), box=Box("S · final state", "output", note=chain.final_state, gid="out-S"))
        dag.add_edges_from([(made_by[new], "more"), (("in", "rest"), "more"), ("more", ("out", "rest")),
                            ("more", ("out", "S"))])
    if len(chains) > 1:
        seqs = f"sequence{'s' if len(chains) > 2 else ''} {_span(1, len(chains) - 1)}"
        steps = sum(len(c.step_ops) for c in chains[1:])
        ops = sum(c.ops for c in chains[1:])
        dag.add_node("others", box=Box(f"+ {seqs}: {steps} steps, {ops} ops", "collapsed",
                                       ("each its own chain, on its own state",), gid="other-sequences"))
        dag.add_node(("in", "others"), box=Box(f"q, k, v, g, β, S · {seqs}", "input"))
        dag.add_node(("out", "others"), box=Box(f"o, final S · {seqs}", "output"))
        dag.add_edges_from([(("in", "others"), "others"), ("others", ("out", "others"))])
    return dag


def _attr_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def fused_box(fused: FusedView, info: ChainInfo | None) -> Box:
    """The fused node: its op, name, shape facts from the report and every attribute."""
    lines = [fused.name]
    if info is not None:
        seqs = f", {info.sequences} sequences" if info.sequences > 1 else ""
        lines += [f"T = {info.steps} tokens{seqs}", f"HV = {info.heads} heads, K = {info.key_dim}, "
                  f"V = {info.value_dim}", f"gate: {info.gate}",
                  f"initial state: {'given' if info.initial_state else 'zeros'}"]
    lines += [f"{k} = {_attr_text(v)}" for k, v in fused.attrs.items()]
    return Box(fused.op, "fused", tuple(lines), gid="fused-node")


def after_terminals(fused: FusedView) -> tuple[list[Box], list[Box]]:
    """Input and output terminals of the fused node, by the op contract's role names."""
    return ([Box(role, "input", note=value) for role, value in fused.inputs],
            [Box(role, "output", note=value) for role, value in fused.outputs])
