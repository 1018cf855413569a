"""Shape, layout and tensor-creation ops, plus the argument helpers shared by the package."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gdnc.errors import ShapeError, UnsupportedOpError
from gdnc.opset.onnx_ops.dtypes import attr_tensor
from gdnc.opset.registry import OpContext, register, specializes

Fn = Callable[..., torch.Tensor]
_HUGE = 2**62  # beyond any dim: Slice bounds past it clamp alike, and torch takes it without a warning


def as_ints(value: Any) -> list[int]:
    """A shape/axes/index argument (tensor, array, sequence or scalar) as a list of ints."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Sequence):
        return [int(v) for v in value]
    return [int(value)]


def norm_axis(axis: int, rank: int) -> int:
    """``axis`` in ``[-rank, rank)`` mapped to ``[0, rank)``; ShapeError otherwise."""
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def axes_arg(ctx: OpContext, inputs: list[Any], index: int, input_since: int) -> list[int] | None:
    """Axes given as the ``axes`` attribute before ``input_since``, as input ``index`` after."""
    if ctx.opset < input_since:
        axes = ctx.attr("axes")
        return None if axes is None else as_ints(axes)
    value = optional_input(inputs, index)
    return None if value is None else as_ints(value)


def optional_input(inputs: list[Any], index: int) -> Any:
    """Input ``index``, or None when omitted or past the end."""
    return inputs[index] if len(inputs) > index else None


@register("Shape", since=1)
def _shape(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    dims = list(x.shape)[ctx.attr("start", 0) : ctx.attr("end", None)]
    return [torch.tensor(dims, dtype=torch.int64, device=x.device)]


@register("Size", since=1)
def _size(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    return [torch.tensor(x.numel(), dtype=torch.int64, device=x.device)]


@register("Reshape", since=5, host_inputs=(1,))
def _reshape(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x, shape = inputs[0], as_ints(inputs[1])
    if not ctx.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@specializes(_reshape)
def _reshape_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Fn | None:
    """A constant shape without 0 (or with allowzero): one reshape."""
    if set(constants) != {1} or constants[1] is None:
        return None
    shape = tuple(as_ints(constants[1]))
    if 0 in shape and not ctx.attr("allowzero", 0):
        return None
    return lambda x: x.reshape(shape)


@register("Transpose", since=1)
def _transpose(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    perm = ctx.attr("perm") or list(range(x.dim() - 1, -1, -1))
    return [x.permute(as_ints(perm))]


@specializes(_transpose)
def _transpose_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Fn | None:
    perm = ctx.attr("perm")
    if constants or not perm:
        return None
    dims = tuple(as_ints(perm))
    return lambda x: x.permute(dims)


@register("Unsqueeze", since=1, host_inputs=(1,))
def _unsqueeze(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    axes = axes_arg(ctx, inputs, 1, input_since=13) or []
    rank = x.dim() + len(axes)
    for axis in sorted(norm_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@specializes(_unsqueeze)
def _unsqueeze_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Fn | None:
    """Constant axes, none negative: unsqueezes in increasing order."""
    if ctx.opset < 13:
        axes = ctx.attr("axes")
        known = not constants
    else:
        axes, known = constants.get(1), set(constants) == {1}
    if not known or axes is None:
        return None
    dims = sorted(as_ints(axes))
    if not dims or dims[0] < 0 or len(set(dims)) != len(dims):
        return None
    if len(dims) == 1:
        return lambda x: x.unsqueeze(dims[0])

    def unsqueeze(x: torch.Tensor) -> torch.Tensor:
        for d in dims:
            x = x.unsqueeze(d)
        return x

    return unsqueeze


@register("Squeeze", since=1, host_inputs=(1,))
def _squeeze(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    axes = axes_arg(ctx, inputs, 1, input_since=13)
    if axes is None:
        return [x.squeeze()]
    dims = tuple(norm_axis(a, x.dim()) for a in axes)
    if any(x.shape[d] != 1 for d in dims):
        raise ShapeError(f"Squeeze axes {axes} of shape {tuple(x.shape)} are not all 1")
    return [x.squeeze(dims)]


@register("Flatten", since=1)
def _flatten(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    axis = ctx.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@register("Concat", since=4)
def _concat(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [torch.cat(inputs, dim=ctx.attr("axis"))]


@specializes(_concat)
def _concat_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Fn | None:
    axis = ctx.attr("axis")
    if constants or axis is None:
        return None
    return lambda *xs: torch.cat(xs, dim=axis)


@register("Split", since=2, host_inputs=(1,))
def _split(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """``split`` sizes: attribute before opset 13, input after; else ceil-sized equal chunks."""
    x = inputs[0]
    axis = norm_axis(ctx.attr("axis", 0), x.dim())
    sizes = ctx.attr("split") if ctx.opset < 13 else optional_input(inputs, 1)
    sizes = [] if sizes is None else as_ints(sizes)
    if not sizes:
        parts = ctx.attr("num_outputs", ctx.num_outputs)
        return list(torch.split(x, -(-x.shape[axis] // parts), dim=axis))
    return list(torch.split(x, sizes, dim=axis))


def _slice_axis(x: torch.Tensor, axis: int, start: int, end: int, step: int) -> torch.Tensor:
    dim = x.shape[axis]
    if step == 0:
        raise ShapeError("Slice step must not be 0")
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return x[(slice(None),) * axis + (slice(start, end, step),)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    index = torch.arange(start, end, step, device=x.device)
    return x.index_select(axis, index)


@register("Slice", since=1, host_inputs=(1, 2, 3, 4))
def _slice(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """starts/ends/axes attributes before opset 10, then inputs with optional steps."""
    x = inputs[0]
    if ctx.opset < 10:
        starts, ends, axes, steps = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    else:
        starts, ends, axes, steps = (optional_input(inputs, i) for i in range(1, 5))
    starts, ends = as_ints(starts), as_ints(ends)
    axes = as_ints(axes) if axes is not None else list(range(len(starts)))
    steps = as_ints(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        x = _slice_axis(x, norm_axis(axis, x.dim()), start, end, step)
    return [x]


@specializes(_slice)
def _slice_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Fn | None:
    """Constant bounds, positive steps, axes >= 0 and distinct: one indexing by Python slices
    (which clamp exactly as Slice does for positive steps)."""
    if ctx.opset < 10 or set(constants) != set(range(1, ctx.num_inputs)):
        return None
    starts, ends, axes, steps = (constants.get(i) for i in range(1, 5))
    if starts is None or ends is None:
        return None
    starts, ends = as_ints(starts), as_ints(ends)
    axes_ = as_ints(axes) if axes is not None else list(range(len(starts)))
    steps_ = as_ints(steps) if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes_) == len(steps_) or min(steps_, default=1) < 1 \
            or min(axes_, default=0) < 0 or len(set(axes_)) != len(axes_):
        return None
    index: list[slice] = [slice(None)] * (max(axes_, default=-1) + 1)
    for start, end, axis, step in zip(starts, ends, axes_, steps_):
        index[axis] = slice(min(max(start, -_HUGE), _HUGE), min(max(end, -_HUGE), _HUGE), step)
    key = tuple(index)
    return lambda x: x[key]


@register("Expand", since=8, host_inputs=(1,))
def _expand(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x, shape = inputs[0], tuple(as_ints(inputs[1]))
    try:  # numpy's rule is ONNX's; torch.broadcast_shapes would import sympy (~0.4 s) on first use
        return [x.expand(np.broadcast_shapes(tuple(x.shape), shape))]
    except ValueError:
        raise ShapeError(f"Expand: shape {list(shape)} does not broadcast with "
                         f"{list(x.shape)}") from None


@register("Tile", since=6, host_inputs=(1,))
def _tile(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [inputs[0].repeat(as_ints(inputs[1]))]


@register("ConstantOfShape", since=9)
def _constant_of_shape(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    shape = inputs[0]
    value = ctx.attr("value")
    fill = attr_tensor(value).reshape(()) if value is not None else torch.tensor(0.0)
    return [torch.full(as_ints(shape), fill.item(), dtype=fill.dtype, device=shape.device)]


_CONSTANT_ATTRS = {
    "value_float": torch.float32,
    "value_floats": torch.float32,
    "value_int": torch.int64,
    "value_ints": torch.int64,
}


@register("Constant", since=1)
def _constant(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    if ctx.attr("value") is not None:
        return [attr_tensor(ctx.attr("value"))]
    for name, dtype in _CONSTANT_ATTRS.items():
        if ctx.attr(name) is not None:
            return [torch.tensor(ctx.attr(name), dtype=dtype)]
    raise UnsupportedOpError(f"Constant {ctx.node_name!r}: only numeric dense values are supported")


def range_length(start: float, limit: float, delta: float) -> int:
    """Range's element count, max(ceil((limit - start) / delta), 0); ShapeError for a delta of
    0 or a count that is not finite (an infinite or NaN bound)."""
    if delta == 0:
        raise ShapeError(f"delta is 0 (start {start}, limit {limit}): the length is undefined")
    exact = all(isinstance(v, int) for v in (start, limit, delta))
    count = -((start - limit) // delta) if exact else (limit - start) / delta
    if not math.isfinite(count):
        raise ShapeError(f"start {start}, limit {limit}, delta {delta} give no finite length")
    return max(math.ceil(count), 0)


@register("Range", since=11)
def _range(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """``start + i * delta`` for i < ``range_length(start, limit, delta)``."""
    start, limit, delta = (t.item() for t in inputs)
    dtype, device = inputs[0].dtype, inputs[0].device
    steps = torch.arange(range_length(start, limit, delta), device=device).to(dtype)
    return [steps * delta + start]
