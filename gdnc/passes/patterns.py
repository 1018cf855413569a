"""Small recognisers shared by rules: constants, ranks, axes, broadcast placement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gdnc.ir.graph import Graph, Node

ONNX_DOMAINS = ("", "ai.onnx")


def op_is(node: Node | None, *ops: str) -> bool:
    return node is not None and node.domain in ONNX_DOMAINS and node.op_type in ops


def producer(g: Graph, value: str, *ops: str) -> Node | None:
    """The node producing ``value`` if its op is one of ``ops``."""
    node = g.producer_node(value)
    return node if op_is(node, *ops) else None


def rank(g: Graph, value: str) -> int | None:
    shape = g.values.get(value)
    if shape is None or shape.shape is None:
        const = g.const_value(value)
        return None if const is None else const.ndim
    return len(shape.shape)


def static_shape(g: Graph, value: str) -> tuple[int, ...] | None:
    """The shape of ``value`` when every dim is a known int."""
    shape = shape_of(g, value)
    return None if shape is None or not all(isinstance(d, int) for d in shape) else shape


def shape_of(g: Graph, value: str) -> tuple | None:
    """The shape of ``value``, a constant's or the declared one (dims int, symbolic or None);
    None when the rank is unknown."""
    const = g.const_value(value)
    if const is not None:
        return tuple(const.shape)
    val = g.values.get(value)
    return None if val is None or val.shape is None else tuple(val.shape)


def known_dim(shape: tuple | None, axis: int) -> int | None:
    """``shape[axis]`` when it is a known int."""
    return shape[axis] if shape is not None and isinstance(shape[axis], int) else None


def scalar_const(g: Graph, value: str) -> float | None:
    """The value of a constant holding a single number, else None."""
    arr = g.const_value(value)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(()))


def int_list(g: Graph, value: str) -> list[int] | None:
    arr = g.const_value(value) if value else None
    return None if arr is None else [int(x) for x in np.asarray(arr).reshape(-1)]


def axes_of(g: Graph, node: Node, input_index: int = 1) -> list[int] | None:
    """Axes of Unsqueeze/Squeeze/Reduce*: the attribute (old opsets) or the constant input."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attr("axes")]
    if len(node.inputs) > input_index and node.inputs[input_index]:
        return int_list(g, node.inputs[input_index])
    return []


def norm_axes(axes: list[int], r: int) -> list[int]:
    return sorted(a + r if a < 0 else a for a in axes)


def is_zero_const(g: Graph, value: str) -> bool:
    """True for an all-zeros constant tensor (initializer, Constant, ConstantOfShape 0)."""
    arr = g.const_value(value)
    if arr is not None:
        return bool(arr.size) and not np.any(arr)
    node = producer(g, value, "ConstantOfShape")
    if node is not None:
        fill = node.attr("value")
        return fill is None or not np.any(fill)
    node = producer(g, value, "Expand")
    return node is not None and is_zero_const(g, node.inputs[0])


@dataclass(frozen=True)
class Placed:
    """``base`` broadcast into rank ``rank``: ``positions[i]`` is where base dim i sits."""

    base: str
    positions: tuple[int, ...]
    rank: int


def placement(g: Graph, value: str, out_rank: int) -> Placed | None:
    """See through Unsqueeze chains and right-aligned broadcasting to the base tensor."""
    r = rank(g, value)
    if r is None or r > out_rank:
        return None
    # numpy broadcasting right-aligns a lower-rank operand
    positions = list(range(out_rank - r, out_rank))
    current = value
    while True:
        node = producer(g, current, "Unsqueeze")
        if node is None:
            break
        cur_rank = rank(g, current)
        axes = axes_of(g, node)
        if cur_rank is None or axes is None:
            break
        inserted = set(norm_axes(axes, cur_rank))
        positions = [p for i, p in enumerate(positions) if i not in inserted]
        current = node.inputs[0]
    return Placed(current, tuple(positions), out_rank)
