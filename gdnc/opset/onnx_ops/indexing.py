"""Index-driven ops: Gather*, Scatter*, Trilu, NonZero, OneHot. Negative indices wrap."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from gdnc.errors import ShapeError, UnsupportedOpError
from gdnc.opset.onnx_ops.shape_ops import as_ints, norm_axis, optional_input
from gdnc.opset.registry import OpContext, register, specializes

# ONNX scatter ``reduction`` -> torch ``scatter_reduce`` name ("none" is a plain scatter)
_REDUCTIONS = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(index: torch.Tensor, dim: int | torch.Tensor) -> torch.Tensor:
    """int64 indices with negative ones counted from the end of ``dim``."""
    index = index.long()
    return torch.where(index < 0, index + dim, index)


def _linear_index(index: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Row-major offsets into ``dims`` of the index tuples along the last axis of ``index``
    (dims and strides as Python numbers: no tensor made from host values, so a CUDA graph
    can capture it)."""
    offsets = torch.zeros(index.shape[:-1], dtype=torch.int64, device=index.device)
    for i, dim in enumerate(dims):
        offsets += _wrap(index[..., i], int(dim)) * math.prod(dims[i + 1:])
    return offsets


def _reduction(ctx: OpContext) -> str | None:
    name = ctx.attr("reduction", "none")
    if name == "none":
        return None
    if name not in _REDUCTIONS:
        raise UnsupportedOpError(f"{ctx.op_type} reduction {name!r} is not supported")
    return _REDUCTIONS[name]


@register("Gather", since=1)
def _gather(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    data, index = inputs
    return [_take(data, index, norm_axis(ctx.attr("axis", 0), data.dim()))]


def _take(data: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """Gather: the rows ``index`` of ``axis`` (negative ones counting from the end), the index's
    shape in the axis' place. On the CPU indices are wrapped only when a plain ``index_select``
    refuses them (4-5x faster than torch's advanced indexing, which would wrap them itself)."""
    flat = index.reshape(-1).long()
    if data.device.type != "cpu":  # a refused index is a device-side assert there: wrap first
        return data.index_select(axis, _wrap(flat, data.shape[axis])).reshape(
            data.shape[:axis] + index.shape + data.shape[axis + 1:])
    try:
        out = data.index_select(axis, flat)
    except (IndexError, RuntimeError):  # a negative index (or one out of range: raised again below)
        out = data.index_select(axis, _wrap(flat, data.shape[axis]))
    return out.reshape(data.shape[:axis] + index.shape + data.shape[axis + 1:])


@specializes(_gather)
def _gather_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Callable[..., torch.Tensor] | None:
    axis = ctx.attr("axis", 0)
    if constants or axis < 0:
        return None
    return lambda data, index: _take(data, index, axis)


@register("GatherElements", since=11)
def _gather_elements(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    data, index = inputs
    axis = norm_axis(ctx.attr("axis", 0), data.dim())
    return [torch.gather(data, axis, _wrap(index, data.shape[axis]))]


@register("GatherND", since=11)
def _gather_nd(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """The leading ``batch_dims`` axes of data and indices are matched pairwise."""
    data, index = inputs
    b, k = ctx.attr("batch_dims", 0), index.shape[-1]
    batch, dims, tail = math.prod(data.shape[:b]), data.shape[b : b + k], data.shape[b + k :]
    flat = data.reshape(batch, math.prod(dims), *tail)
    rows = torch.arange(batch, device=data.device).unsqueeze(1)
    out = flat[rows, _linear_index(index, dims).reshape(batch, -1)]
    return [out.reshape(*index.shape[:-1], *tail)]


@register("ScatterElements", since=11)
def _scatter_elements(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    data, index, updates = inputs
    axis = norm_axis(ctx.attr("axis", 0), data.dim())
    index = _wrap(index, data.shape[axis])
    reduce = _reduction(ctx)
    if reduce is None:
        return [data.scatter(axis, index, updates)]
    return [data.scatter_reduce(axis, index, updates, reduce, include_self=True)]


@register("ScatterND", since=11)
def _scatter_nd(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    data, index, updates = inputs
    k = index.shape[-1]
    tail = data.shape[k:]
    rows_view = data.reshape(math.prod(data.shape[:k]), *tail)
    in_place = 0 in ctx.donated and data.is_contiguous()  # the caller's pool, updated in place
    out = rows_view if in_place else rows_view.clone()
    reduce = _reduction(ctx)
    if reduce is None and k and index.dtype in (torch.int64, torch.int32):
        # a plain write: one advanced-indexing assignment, an index tensor per indexed dim
        # (torch wraps negative indices as ONNX does)
        target = out.view(data.shape)
        target[tuple(index[..., i] for i in range(k))] = updates
        return [target]
    rows = _linear_index(index, data.shape[:k]).reshape(-1)
    updates = updates.reshape(-1, *tail)
    if reduce is None:
        out[rows] = updates
    else:
        rows = rows.reshape(-1, *(1,) * len(tail)).expand_as(updates)
        out.scatter_reduce_(0, rows, updates, reduce, include_self=True)
    return [out.reshape(data.shape)]


@register("Trilu", since=14, host_inputs=(1,))
def _trilu(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    k = optional_input(inputs, 1)
    fn = torch.triu if ctx.attr("upper", 1) else torch.tril
    return [fn(inputs[0], 0 if k is None else as_ints(k)[0])]


@register("NonZero", since=9)
def _nonzero(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [torch.nonzero(inputs[0]).T.contiguous()]


def _depth(depth: torch.Tensor) -> int:
    """OneHot's depth (one element, cast to an integer); ShapeError unless it is finite and >= 0."""
    if depth.numel() != 1:
        raise ShapeError(f"depth must hold one value, got shape {list(depth.shape)}")
    value = depth.reshape(()).item()
    if not math.isfinite(value) or value < 0:
        raise ShapeError(f"depth {value} is not a finite count >= 0")
    return int(value)


@register("OneHot", since=9)
def _one_hot(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """Output ``values[1]`` where index == position along ``axis``, else ``values[0]``."""
    indices, depth, values = inputs
    depth = _depth(depth)
    index = _wrap(indices, depth)
    axis = norm_axis(ctx.attr("axis", -1), index.dim() + 1)
    hot = (index.unsqueeze(-1) == torch.arange(depth, device=index.device)).movedim(-1, axis)
    return [torch.where(hot, values[1], values[0])]
