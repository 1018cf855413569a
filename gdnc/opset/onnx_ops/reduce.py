"""Reductions along axes: Reduce*, ArgMax/ArgMin, TopK, CumSum."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gdnc.opset.onnx_ops.shape_ops import as_ints, axes_arg, norm_axis
from gdnc.opset.registry import OpContext, OpImpl, register, specializes

Reducer = Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for dim in sorted(dims, reverse=True):
        x = torch.prod(x, dim, keepdim=keep)
    return x


def _mean(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    """Integer means truncate toward zero, as onnxruntime computes them."""
    if x.dtype.is_floating_point:
        return torch.mean(x, dims, keepdim=keep)
    count = math.prod(x.shape[d] for d in dims)
    return torch.div(torch.sum(x, dims, keepdim=keep), count, rounding_mode="trunc")


def _l2(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    return torch.sum(x * x, dims, keepdim=keep).sqrt()


# name -> (reducer, first opset where axes is an input rather than an attribute)
_REDUCERS: dict[str, tuple[Reducer, int]] = {
    "ReduceSum": (lambda x, d, k: torch.sum(x, d, keepdim=k), 13),
    "ReduceMean": (_mean, 18),
    "ReduceMax": (lambda x, d, k: torch.amax(x, d, keepdim=k), 18),
    "ReduceMin": (lambda x, d, k: torch.amin(x, d, keepdim=k), 18),
    "ReduceProd": (_prod, 18),
    "ReduceL2": (_l2, 18),
}


def _reduce_impl(fn: Reducer, input_since: int) -> OpImpl:
    def impl(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
        """keepdims (default 1); empty axes reduce all unless noop_with_empty_axes."""
        x = inputs[0]
        axes = axes_arg(ctx, inputs, 1, input_since)
        if not axes and ctx.attr("noop_with_empty_axes", 0):
            # reduce over no axis: what is left is the elementwise part (|x| for ReduceL2)
            return [fn(x.unsqueeze(0), (0,), False).to(x.dtype)]
        dims = tuple(range(x.dim())) if not axes else tuple(norm_axis(a, x.dim()) for a in axes)
        return [fn(x, dims, bool(ctx.attr("keepdims", 1))).to(x.dtype)]

    @specializes(impl)
    def specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Callable[..., torch.Tensor] | None:
        """Constant, non-empty axes."""
        if ctx.opset < input_since:
            axes, known = ctx.attr("axes"), not constants
        else:
            axes, known = constants.get(1), set(constants) == {1}
        if not known or axes is None or not as_ints(axes):
            return None
        dims, keep = tuple(as_ints(axes)), bool(ctx.attr("keepdims", 1))
        return lambda x: fn(x, dims, keep).to(x.dtype)

    return impl


def _register_reducers() -> None:
    for name, (fn, input_since) in _REDUCERS.items():
        register(name, since=1, host_inputs=(1,))(_reduce_impl(fn, input_since))


_register_reducers()


def _arg_impl(fn: Callable[..., torch.Tensor]) -> OpImpl:
    def impl(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
        """First extreme index along ``axis``, or the last with select_last_index."""
        x = inputs[0]
        axis = norm_axis(ctx.attr("axis", 0), x.dim())
        keep = bool(ctx.attr("keepdims", 1))
        if ctx.attr("select_last_index", 0):
            return [x.shape[axis] - 1 - fn(x.flip(axis), axis, keepdim=keep)]
        return [fn(x, axis, keepdim=keep)]

    return impl


register("ArgMax", since=1)(_arg_impl(torch.argmax))
register("ArgMin", since=1)(_arg_impl(torch.argmin))


@register("TopK", since=1, host_inputs=(1,))
def _topk(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """k is an attribute before opset 10; ties keep the lower index first (stable sort)."""
    x = inputs[0]
    k = ctx.attr("k") if ctx.opset < 10 else as_ints(inputs[1])[0]
    axis = norm_axis(ctx.attr("axis", -1), x.dim())
    values, indices = torch.sort(x, dim=axis, descending=bool(ctx.attr("largest", 1)), stable=True)
    return [values.narrow(axis, 0, k), indices.narrow(axis, 0, k)]


@register("CumSum", since=11, host_inputs=(1,))
def _cumsum(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    axis = norm_axis(as_ints(inputs[1])[0], x.dim())
    reverse = bool(ctx.attr("reverse", 0))
    y = x.flip(axis) if reverse else x
    out = torch.cumsum(y, axis, dtype=x.dtype)
    n = x.shape[axis]
    if ctx.attr("exclusive", 0) and n:
        out = torch.cat(
            [torch.zeros_like(out.narrow(axis, 0, 1)), out.narrow(axis, 0, n - 1)], axis
        )
    return [out.flip(axis) if reverse else out]
