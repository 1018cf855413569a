"""Small hand-built IR graphs of per-token delta-rule steps, in each contraction spelling.

State ``S [B, H, K, V]`` (key-major), ``q, k [B, H, K]``, ``v [B, H, V]``, gate ``g [B, H]``
(log decay) and ``beta [B, H]``; the graph outputs the new state and ``o``.
"""

from __future__ import annotations

import numpy as np

from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.passes.shapes import infer_shapes

B, H, K, V = 2, 3, 4, 5
SPELLINGS = ("reduce", "matmul", "einsum")


def _outer(e: GraphBuilder, spelling: str, row: str, col: str) -> str:
    if spelling == "einsum":
        return e.op("Einsum", row, col, equation="xyk,xyv->xykv")
    op = "Mul" if spelling == "reduce" else "MatMul"
    return e.op(op, e.unsqueeze(row, -1), e.unsqueeze(col, -2))


def _contract(e: GraphBuilder, spelling: str, state: str, vec: str, axis: int = -2) -> str:
    """sum over state axis ``axis`` (-2: the key axis) of ``state * vec``."""
    if spelling == "einsum":
        return e.op("Einsum", vec, state, equation="xyk,xykv->xyv" if axis == -2 else "xyv,xykv->xyk")
    if spelling == "reduce":
        return e.reduce("ReduceSum", e.op("Mul", state, e.unsqueeze(vec, -1 if axis == -2 else -2)), axis,
                        keepdims=0)
    return e.op("Squeeze", e.op("MatMul", e.unsqueeze(vec, -2), state), e.const([-2]))


def step_model(spelling: str = "reduce", *, u_axis: int = -2, leak: bool = False,
               gate_unsqueeze_first: bool = False, value_dim: int = V) -> Model:
    """One step; ``u_axis=-1`` sums u over the value axis (a near miss; needs ``value_dim ==
    K``), ``leak`` also outputs the delta (an intermediate read outside the step),
    ``gate_unsqueeze_first`` writes the decay as ``Exp(Unsqueeze(Unsqueeze(g)))``."""
    e = GraphBuilder.new("step")
    s = e.input("S", FLOAT, [B, H, K, value_dim])
    q, k = (e.input(n, FLOAT, [B, H, K]) for n in ("q", "k"))
    v = e.input("v", FLOAT, [B, H, value_dim])
    g, beta = (e.input(n, FLOAT, [B, H]) for n in ("g", "beta"))
    if gate_unsqueeze_first:
        a = e.op("Exp", e.unsqueeze(e.unsqueeze(g, -1), -1))
    else:
        a = e.unsqueeze(e.unsqueeze(e.op("Exp", g), -1), -1)
    dec = e.op("Mul", s, a)
    u = _contract(e, spelling, dec, k, u_axis)
    delta = e.op("Mul", e.op("Sub", v, u), e.unsqueeze(beta, -1))
    new = e.op("Add", dec, _outer(e, spelling, k, delta))
    o = _contract(e, spelling, new, q)
    e.output(new, "S_new")
    e.output(o, "o")
    if leak:
        e.output(delta, "delta")
    model = e.model()
    infer_shapes(model)
    return model


def step_feeds(seed: int = 0, v_dim: int = V) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"S": (B, H, K, v_dim), "q": (B, H, K), "k": (B, H, K), "v": (B, H, v_dim), "g": (B, H),
              "beta": (B, H)}
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
