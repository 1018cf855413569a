"""Recognisers for the pieces of one delta-rule step, in the canonical spellings.

State ``S`` has rank ``r`` (``[*batch, HV, K, V]`` key-major or ``[*batch, HV, V, K]``);
``axis`` below is the state axis (``r-2`` or ``r-1``) that a vector lies along. Contractions
are the Einsums of :mod:`gdnc.passes.canonicalize` (which runs first); decay and delta are
Mul with broadcast (Unsqueezed) factors, the gate's Exp before its Unsqueezes. Each
recogniser returns a small record or None; none of them looks at more than a few nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.ir.graph import Graph, Node
from gdnc.passes.canonicalize import contract_equation, outer_equation
from gdnc.passes.patterns import placement, producer, rank


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


def _einsum(g: Graph, value: str, *equations: str) -> Node | None:
    node = producer(g, value, "Einsum")
    return node if node is not None and node.attr("equation") in equations else None


def outer(g: Graph, value: str) -> Outer | None:
    """``value`` = the canonical outer-product Einsum (``row`` first)."""
    r = rank(g, value)
    node = None if r is None or r < 3 else _einsum(g, value, outer_equation(r))
    return None if node is None else Outer(node.inputs[0], node.inputs[1])


def contract(g: Graph, value: str) -> Contract | None:
    """``value`` = the canonical contraction Einsum of a rank-r state with a vector, in rank r-1."""
    r1 = rank(g, value)
    if r1 is None or r1 < 2:
        return None
    r = r1 + 1
    for axis in (r - 2, r - 1):
        node = _einsum(g, value, contract_equation(r, axis))
        if node is not None:
            return Contract(node.inputs[0], node.inputs[1], axis)
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
