"""Recognisers for the pieces of one delta-rule step, in any of the spellings we meet.

State ``S`` has rank ``r`` (``[*batch, HV, K, V]`` key-major or ``[*batch, HV, V, K]``);
``axis`` below is the state axis (``r-2`` or ``r-1``) that a vector lies along. Each
recogniser returns a small record or None; none of them looks at more than a few nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.ir.graph import Graph
from gdnc.passes.patterns import Placed, axes_of, norm_axes, placement, producer, rank


@dataclass(frozen=True)
class Outer:
    """``row ⊗ col``: ``row`` lies along state axis r-2, ``col`` along r-1."""

    row: str
    col: str


@dataclass(frozen=True)
class Contract:
    """``sum_axis(state * vec)``: ``vec`` lies along state axis ``axis``, which is summed."""

    state: str
    vec: str
    axis: int


@dataclass(frozen=True)
class Decay:
    """``prev * a``; ``gate`` is log a when ``is_log`` (an Exp was seen) else a itself.

    ``key_axis`` is None for a scalar gate per head, else the state axis it varies along.
    """

    prev: str
    gate: str
    is_log: bool
    key_axis: int | None


@dataclass(frozen=True)
class Delta:
    """``(v - u) * beta``."""

    v: str
    u: str
    beta: str


def _vector_along(p: Placed | None, axis: int) -> bool:
    """True when ``p`` is a rank r-1 vector sitting on leading dims + ``axis``."""
    return p is not None and p.positions == tuple(range(p.rank - 2)) + (axis,)


def _einsum_terms(g: Graph, value: str) -> tuple[list[str], list[str], str] | None:
    node = producer(g, value, "Einsum")
    if node is None or len(node.inputs) != 2:
        return None
    eq = str(node.attr("equation", "")).replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    return terms, list(node.inputs), out


def outer(g: Graph, value: str) -> Outer | None:
    r = rank(g, value)
    if r is None or r < 3:
        return None
    node = producer(g, value, "Mul", "MatMul")
    if node is not None:
        a, b = (placement(g, x, r) for x in node.inputs)
        for row, col in ((a, b), (b, a)) if node.op_type == "Mul" else ((a, b),):
            if _vector_along(row, r - 2) and _vector_along(col, r - 1):
                assert row is not None and col is not None
                return Outer(row.base, col.base)
        return None
    parsed = _einsum_terms(g, value)
    if parsed is None:
        return None
    (t0, t1), (x0, x1), out = parsed
    if len(out) == r and t0 == out[:-2] + out[-2] and t1 == out[:-2] + out[-1]:
        return Outer(x0, x1)
    return None


def contract(g: Graph, value: str) -> Contract | None:
    """``value`` = a contraction of a rank-(r) state with a vector, in rank r-1."""
    r1 = rank(g, value)
    if r1 is None:
        return None
    r = r1 + 1
    red = producer(g, value, "ReduceSum")
    if red is not None:
        axes = axes_of(g, red)
        mul = producer(g, red.inputs[0], "Mul")
        if mul is None or not axes or len(axes) != 1 or red.attr("keepdims", 1) != 0:
            return None
        (axis,) = norm_axes(axes, r)
        for s, x in (mul.inputs, mul.inputs[::-1]):
            if rank(g, s) == r and _vector_along(placement(g, x, r), axis):
                return Contract(s, placement(g, x, r).base, axis)  # type: ignore[union-attr]
        return None
    sq = producer(g, value, "Squeeze", "Reshape")
    if sq is not None:
        mm = producer(g, sq.inputs[0], "MatMul")
        if mm is None or rank(g, sq.inputs[0]) != r:
            return None
        a, b = mm.inputs
        if rank(g, b) == r and _vector_along(placement(g, a, r), r - 1):
            # [.., 1, K] @ [.., K, V]: vector lies along the state's r-2 axis
            pa = placement(g, a, r)
            if pa is not None and rank(g, pa.base) == r1:
                return Contract(b, pa.base, r - 2)
        if rank(g, a) == r and _vector_along(placement(g, b, r), r - 2):
            pb = placement(g, b, r)
            if pb is not None and rank(g, pb.base) == r1:
                return Contract(a, pb.base, r - 1)
        return None
    parsed = _einsum_terms(g, value)
    if parsed is None:
        return None
    terms, inputs, out = parsed
    for (ts, s), (tv, v) in ((zip(terms, inputs)), (zip(terms[::-1], inputs[::-1]))):
        if len(ts) == r and len(tv) == r1 and len(out) == r1 and ts[:-2] == tv[:-1] == out[:-1]:
            summed = tv[-1]
            kept = out[-1]
            if {summed, kept} == set(ts[-2:]) and summed != kept:
                return Contract(s, v, r - 2 + ts[-2:].index(summed))
    return None


def decay(g: Graph, value: str) -> Decay | None:
    r = rank(g, value)
    node = producer(g, value, "Mul")
    if node is None or r is None:
        return None
    for s, d in (node.inputs, node.inputs[::-1]):
        ps, pd = placement(g, s, r), placement(g, d, r)
        if ps is None or pd is None or ps.positions != tuple(range(r)) or ps.base != s:
            continue
        lead = tuple(range(r - 2))
        if pd.positions == lead:
            key_axis = None
        elif pd.positions in (lead + (r - 2,), lead + (r - 1,)):
            key_axis = pd.positions[-1]
        else:
            continue
        exp = producer(g, pd.base, "Exp")
        if exp is not None:
            return Decay(s, exp.inputs[0], True, key_axis)
        return Decay(s, pd.base, False, key_axis)
    return None


def delta(g: Graph, value: str) -> Delta | None:
    r = rank(g, value)
    node = producer(g, value, "Mul")
    if node is None or r is None:
        return None
    for a, b in (node.inputs, node.inputs[::-1]):
        sub = producer(g, a, "Sub")
        pb = placement(g, b, r)
        if (
            sub is not None and pb is not None and pb.positions == tuple(range(r - 1))
            and rank(g, sub.inputs[0]) == r and rank(g, sub.inputs[1]) == r
        ):
            return Delta(sub.inputs[0], sub.inputs[1], pb.base)
    return None
