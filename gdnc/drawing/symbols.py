"""Readable labels for the ops of one matched step: what each op computes, in symbols.

The matcher names a step's boundary values (S, q, k, v, g, β, the new state S′, the output o);
the recognisers it uses name three intermediate ones (the decayed state Ŝ, the memory read
u = k·Ŝ, the delta δ = (v − u)·β). Every other value is spelled as an expression of these,
layout ops (Unsqueeze, Reshape ...) passing their input's symbol through.
"""

from __future__ import annotations

from collections.abc import Collection

from gdnc.ir.graph import Graph, Node
from gdnc.passes.delta_net.recognize import delta, outer
from gdnc.passes.delta_net.steps import Step

LAYOUT_OPS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Expand", "Identity", "Flatten"})
_INFIX = {"Mul": "·", "Add": " + ", "Sub": " − ", "Div": " / ", "MatMul": " @ "}
_MAX_EXPR = 30

# what each symbol stands for, for a legend
LEGEND = (
    ("S", "state in"), ("Ŝ", "decayed state"), ("u", "memory read k·Ŝ"), ("δ", "delta (v − u)·β"),
    ("S′", "state out"), ("o", "output q·S′"),
)


def _symbols(g: Graph, step: Step) -> tuple[dict[str, str], str]:
    """The symbol of every value the matcher and its recognisers name in ``step``, and the
    outer-product update k ⊗ δ."""
    symbols = {step.prev: "S", step.q: "q", step.k: "k", step.v: "v", step.gate: "g", step.beta: "β",
               step.new: "S′", step.o: "o"}
    add = g.producer_node(step.new)
    assert add is not None  # the step is anchored at this Add
    decayed, update = add.inputs if outer(g, add.inputs[1]) is not None else add.inputs[::-1]
    factors = outer(g, update)
    assert factors is not None
    d = factors.col if step.layout == "kv" else factors.row
    found = delta(g, d)
    assert found is not None
    symbols.update({decayed: "Ŝ", found.u: "u", d: "δ"})
    return symbols, update


class StepLabels:
    """Labels of one step's ops: ``label(node)`` is ``"δ = (v − u)·β"`` or ``"k ⊗ δ"``.

    The symbols are those the matcher names in ``g``; the ops labelled are ``nodes`` of
    ``spelled`` (default: ``step``'s own nodes in ``g``), e.g. the same step as the user's file
    spells it, before canonicalisation (which keeps the value names the symbols stand for).
    """

    def __init__(self, g: Graph, step: Step, spelled: Graph | None = None,
                 nodes: Collection[int] | None = None) -> None:
        self._symbols, self._outer = _symbols(g, step)
        self._g = g if spelled is None else spelled
        self._nodes = set(step.nodes if nodes is None else nodes)

    def label(self, node: Node) -> str:
        expr = self._expr(node)
        name = self._symbols.get(node.outputs[0])
        return expr if name is None else f"{name} = {expr}"

    def _term(self, value: str) -> str:
        if value in self._symbols:
            return self._symbols[value]
        node = self._g.producer_node(value)
        if node is None or self._g.producer(value) not in self._nodes:
            return value
        return self._expr(node)

    def reads(self, node: Node) -> list[str]:
        """The values ``node`` reads that the drawing shows: all but unnamed constants."""
        return [x for x in node.inputs if x and (x in self._symbols or self._g.const_value(x) is None)]

    def _expr(self, node: Node) -> str:
        args = [self._term(x) for x in self.reads(node)]
        op = node.op_type
        if op in LAYOUT_OPS:
            text = args[0] if args else op
        elif node.outputs[0] == self._outer and len(args) == 2:
            text = " ⊗ ".join(args)
        elif op in _INFIX and len(args) == 2:
            tight = op in ("Mul", "Div", "MatMul")
            text = _INFIX[op].join(f"({a})" if tight and (" + " in a or " − " in a) else a for a in args)
        elif op == "ReduceSum":
            text = f"Σ({', '.join(args)})"
        else:
            text = f"{op.lower()}({', '.join(args)})"
        return text if len(text) <= _MAX_EXPR else text[:_MAX_EXPR - 1] + "…"
