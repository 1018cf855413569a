"""Canonical spellings for what the delta-net recognisers read, rewritten before matching.

- Contractions of a delta-rule step (the outer-product update ``k ⊗ δ`` at a state update
  ``S_new = S_dec + upd`` and the reads ``contract(S_dec, k)``, ``contract(S_new, q)``),
  spelled Mul+ReduceSum, MatMul(+Squeeze/Reshape) or Einsum, become ONE two-operand Einsum
  with a normalised equation (:func:`outer_equation`, :func:`contract_equation`), operands
  ``(row, col)`` and ``(state, vector)``. Only the contractions around a state update (an Add
  one of whose inputs is an outer product of rank >= 3) are rewritten, and only where every
  labelled dim is the same on both operands (no broadcasting), in one dtype; the replaced
  value keeps its name. Einsum runs in gdnc's runtime and in onnxruntime.
- An elementwise unary op on the output of a shape-only op (``Exp(Unsqueeze(x))``) moves
  before it (``Unsqueeze(Exp(x))``): same elements computed, so the same cost; reads that
  select elements (Gather, Slice) stay before the unary op. Only where the shape op's output
  has no other reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.ir.builder import GraphBuilder
from gdnc.ir.graph import Graph, Node
from gdnc.passes.patterns import Placed, axes_of, norm_axes, op_is, placement, rank, shape_of
from gdnc.passes.rewrite import RewriteStats, graph_rewrite

# the leading (batch and head) labels, then the state's axes r-2 and r-1
_LEADING = "abcdefgh"
_ROW, _COL = "i", "j"
UNARY_OPS = ("Exp", "Log", "Neg", "Sigmoid", "Softplus")
SHAPE_OPS = ("Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Identity")


def outer_equation(r: int) -> str:
    """``row ⊗ col`` into rank ``r``: row [L.., i], col [L.., j] -> [L.., i, j]."""
    lead = _LEADING[: r - 2]
    return f"{lead}{_ROW},{lead}{_COL}->{lead}{_ROW}{_COL}"


def contract_equation(r: int, axis: int) -> str:
    """``sum_axis(state * vec)`` of a rank-``r`` state over state axis ``axis`` (r-2 or r-1)."""
    lead = _LEADING[: r - 2]
    summed, kept = (_ROW, _COL) if axis == r - 2 else (_COL, _ROW)
    return f"{lead}{_ROW}{_COL},{lead}{summed}->{lead}{kept}"


@dataclass(frozen=True)
class Spelled:
    """A contraction found at a value: ``operands`` in canonical order, its equation, and the
    nodes of the old spelling (the value's producer first)."""

    operands: tuple[str, str]
    equation: str
    nodes: tuple[int, ...]


def _vector_along(p: Placed | None, axis: int) -> bool:
    """True when ``p`` is a rank r-1 vector sitting on leading dims + ``axis``."""
    return p is not None and p.positions == tuple(range(p.rank - 2)) + (axis,)


def _same_dims(a: tuple | None, b: tuple | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        x is not None and x == y for x, y in zip(a, b))


def _fits(g: Graph, state: str, vec: str, axis: int) -> bool:
    """The vector [L.., n] has the state's leading dims and its ``axis`` dim, in its dtype."""
    s, v = shape_of(g, state), shape_of(g, vec)
    if s is None or v is None or g.value(state).dtype != g.value(vec).dtype:
        return False
    return _same_dims(v, (*s[: len(s) - 2], s[axis]))


def _einsum_terms(g: Graph, node: Node) -> tuple[list[str], str] | None:
    eq = str(node.attr("equation", "")).replace(" ", "")
    if len(node.inputs) != 2 or "->" not in eq or "." in eq:
        return None
    lhs, out = eq.split("->")
    return lhs.split(","), out


def _outer_spelling(g: Graph, value: str, r: int) -> Spelled | None:
    nid = g.producer(value)
    node = None if nid is None else g.node(nid)
    if op_is(node, "Mul", "MatMul"):
        assert nid is not None and node is not None
        a, b = (placement(g, x, r) for x in node.inputs)
        for row, col in ((a, b), (b, a)) if node.op_type == "Mul" else ((a, b),):
            if _vector_along(row, r - 2) and _vector_along(col, r - 1):
                assert row is not None and col is not None
                return Spelled((row.base, col.base), outer_equation(r), (nid,))
        return None
    if op_is(node, "Einsum"):
        assert nid is not None and node is not None
        parsed = _einsum_terms(g, node)
        if parsed is None:
            return None
        (t0, t1), out = parsed
        if len(out) == r and len(set(out)) == r and t0 == out[:-2] + out[-2] and t1 == out[:-2] + out[-1]:
            return Spelled((node.inputs[0], node.inputs[1]), outer_equation(r), (nid,))
    return None


def _contract_spelling(g: Graph, value: str) -> Spelled | None:
    r1 = rank(g, value)
    if r1 is None:
        return None
    r = r1 + 1
    nid = g.producer(value)
    node = None if nid is None else g.node(nid)
    if nid is None or node is None:
        return None
    if op_is(node, "ReduceSum"):
        axes = axes_of(g, node)
        mul_id = g.producer(node.inputs[0])
        if mul_id is None or not op_is(g.node(mul_id), "Mul") or not axes or len(axes) != 1 \
                or node.attr("keepdims", 1) != 0:
            return None
        (axis,) = norm_axes(axes, r)
        mul = g.node(mul_id)
        for s, x in (mul.inputs, mul.inputs[::-1]):
            p = placement(g, x, r)
            if rank(g, s) == r and _vector_along(p, axis):
                assert p is not None
                return Spelled((s, p.base), contract_equation(r, axis), (nid, mul_id))
        return None
    if op_is(node, "Squeeze", "Reshape"):
        mm_id = g.producer(node.inputs[0])
        if mm_id is None or not op_is(g.node(mm_id), "MatMul") or rank(g, node.inputs[0]) != r:
            return None
        a, b = g.node(mm_id).inputs
        pa, pb = placement(g, a, r), placement(g, b, r)
        if rank(g, b) == r and _vector_along(pa, r - 1) and rank(g, pa.base) == r1:  # type: ignore[union-attr]
            # [.., 1, K] @ [.., K, V]: the vector lies along the state's r-2 axis
            return Spelled((b, pa.base), contract_equation(r, r - 2), (nid, mm_id))  # type: ignore[union-attr]
        if rank(g, a) == r and _vector_along(pb, r - 2) and rank(g, pb.base) == r1:  # type: ignore[union-attr]
            return Spelled((a, pb.base), contract_equation(r, r - 1), (nid, mm_id))  # type: ignore[union-attr]
        return None
    if op_is(node, "Einsum"):
        parsed = _einsum_terms(g, node)
        if parsed is None:
            return None
        terms, out = parsed
        for (ts, s), (tv, v) in (zip(terms, node.inputs), zip(terms[::-1], node.inputs[::-1])):
            if len(ts) == r and len(set(ts)) == r and len(tv) == r1 and len(out) == r1 \
                    and ts[:-2] == tv[:-1] == out[:-1]:
                summed, kept = tv[-1], out[-1]
                if {summed, kept} == set(ts[-2:]) and summed != kept:
                    return Spelled((s, v), contract_equation(r, r - 2 + ts[-2:].index(summed)), (nid,))
    return None


def _rewrite(g: Graph, value: str, found: Spelled) -> bool:
    """Replace the spelling producing ``value`` by the canonical Einsum; False if it is one."""
    head = g.node(found.nodes[0])
    if op_is(head, "Einsum") and list(head.inputs) == list(found.operands) \
            and head.attr("equation") == found.equation:
        return False
    position = g.position(found.nodes[0])
    g.remove_node(found.nodes[0])
    GraphBuilder(g, position=position).op("Einsum", *found.operands, out=value, name=head.name,
                                          equation=found.equation)
    _drop_unread(g, head.inputs, set(found.nodes[1:]))
    return True


def _drop_unread(g: Graph, inputs: list[str], spelling: set[int]) -> None:
    """Remove the old spelling's nodes above ``inputs`` (``spelling`` and the Unsqueezes that
    placed its vectors) once nothing reads them."""
    stack = list(inputs)
    while stack:
        nid = g.producer(stack.pop())
        if nid is None or not (nid in spelling or op_is(g.node(nid), "Unsqueeze")):
            continue
        node = g.node(nid)
        if any(g.consumers(o) or g.is_graph_output(o) for o in node.outputs if o):
            continue
        g.remove_node(nid)
        stack.extend(i for i in node.inputs if i)


def _readers(g: Graph, state: str) -> list[str]:
    """Values computed from ``state`` by its readers and their readers (where a contraction
    of the state ends)."""
    values: list[str] = []
    for nid in g.consumers(state):
        outs = [o for o in g.node(nid).outputs if o]
        values.extend(outs)
        values.extend(o for out in outs for c in g.consumers(out) for o in g.node(c).outputs if o)
    return values


@dataclass(frozen=True)
class CanonicalContractions:
    """At a state update ``Add(S_dec, outer)``: the outer product and the state contractions
    reading ``S_dec`` or the Add's result become canonical Einsums."""

    name: str = "canonical-contraction"
    ops: tuple[str, ...] = ("Add",)

    def apply(self, g: Graph, nid: int) -> bool:
        add = g.node(nid)
        new = add.outputs[0]
        r = rank(g, new)
        if not op_is(add, "Add") or r is None or not 3 <= r <= len(_LEADING) + 2:
            return False
        for dec, upd in (add.inputs, add.inputs[::-1]):
            outer = _outer_spelling(g, upd, r)
            if outer is not None and all(rank(g, x) == r - 1 for x in outer.operands) \
                    and _fits(g, new, outer.operands[0], r - 2) and _fits(g, new, outer.operands[1], r - 1):
                break
        else:
            return False
        changed = _rewrite(g, upd, outer)
        for state in (dec, new):
            for value in _readers(g, state):
                if not g.has_node(g.producer(value) or -1):
                    continue
                found = _contract_spelling(g, value)
                if found is None or found.operands[0] != state:
                    continue
                axis = r - 2 if found.equation == contract_equation(r, r - 2) else r - 1
                if _fits(g, state, found.operands[1], axis):
                    changed = _rewrite(g, value, found) or changed
        return changed


@dataclass(frozen=True)
class UnaryBeforeShapeOp:
    """``unary(shape_op(x, ..))`` -> ``shape_op(unary(x), ..)`` when only the unary op reads
    the shape op's output."""

    name: str = "unary-before-shape-op"
    ops: tuple[str, ...] = UNARY_OPS

    def apply(self, g: Graph, nid: int) -> bool:
        unary = g.node(nid)
        if not op_is(unary, *UNARY_OPS) or len(unary.inputs) != 1:
            return False
        moved = unary.inputs[0]
        mid = g.producer(moved)
        if mid is None or not op_is(g.node(mid), *SHAPE_OPS):
            return False
        if len(g.consumers(moved)) != 1 or g.is_graph_output(moved):
            return False
        shape_op = g.node(mid)
        source, out = shape_op.inputs[0], unary.outputs[0]
        position = g.position(mid)
        g.remove_node(nid)
        g.remove_node(mid)
        b = GraphBuilder(g, position=position)
        early = b.typed(b.fresh(f"{source}_{unary.op_type.lower()}"), g.value(out).dtype, shape_of(g, source))
        b.add(Node(unary.op_type, [source], [early], attrs=unary.attrs, name=unary.name))
        b.add(Node(shape_op.op_type, [early, *shape_op.inputs[1:]], [out], attrs=shape_op.attrs,
                   name=shape_op.name))
        return True


CANONICAL_RULES: list = [UnaryBeforeShapeOp(), CanonicalContractions()]


def canonicalize(g: Graph) -> RewriteStats:
    """Rewrite ``g`` into the canonical spellings, in place; the stats count each rule's fires."""
    return graph_rewrite(g, CANONICAL_RULES, "canonicalize")
