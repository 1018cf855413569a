"""Neural-network ops: MatMul, Gemm, Einsum, Conv, (Log)Softmax, normalizations, Gelu."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from gdnc.errors import UnsupportedOpError
from gdnc.opset.onnx_ops.dtypes import torch_dtype
from gdnc.opset.onnx_ops.shape_ops import norm_axis, optional_input
from gdnc.opset.registry import OpContext, OpImpl, direct, register, specializes


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """numpy matmul; integers exactly by broadcast multiply-sum (CUDA has no integer GEMM)."""
    if a.is_floating_point() or a.is_complex():
        return torch.matmul(a, b)
    rows = a.unsqueeze(0) if a.dim() == 1 else a
    cols = b.unsqueeze(-1) if b.dim() == 1 else b
    out = (rows.unsqueeze(-1) * cols.unsqueeze(-3)).sum(-2, dtype=a.dtype)
    if a.dim() == 1:
        out = out.squeeze(-2)
    return out.squeeze(-1) if b.dim() == 1 else out


@register("MatMul", since=1)
def _matmul_op(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [_matmul(inputs[0], inputs[1])]


specializes(_matmul_op)(direct(_matmul, 2))


@register("Gemm", since=7)
def _gemm(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """alpha * A' @ B' + beta * C, C unidirectionally broadcast (optional from opset 11)."""
    a, b, c = inputs[0], inputs[1], optional_input(inputs, 2)
    a = a.T if ctx.attr("transA", 0) else a
    b = b.T if ctx.attr("transB", 0) else b
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    y = _matmul(a, b)
    if alpha != 1.0:
        y = alpha * y
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else beta * c)
    return [y.to(a.dtype)]


@register("Einsum", since=12)
def _einsum(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [torch.einsum(ctx.attr("equation").replace(" ", ""), *inputs)]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@register("Conv", since=1)
def _conv(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """X [N, C, *spatial] (1 to 3 spatial dims) with W [M, C / group, *kernel], optional B [M];
    ``pads`` (all begins, then all ends) explicit or ``auto_pad`` VALID; SAME_* is refused."""
    x, w, b = inputs[0], inputs[1], optional_input(inputs, 2)
    nd = x.dim() - 2
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if nd not in _CONV or auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(f"Conv with {nd} spatial dims and auto_pad {auto_pad} is not supported")
    pads = ctx.attr("pads", None) if auto_pad == "NOTSET" else None
    if pads and any(pads):  # F.pad lists (begin, end) pairs from the last dim backwards
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])])
    conv = _CONV[nd]
    return [conv(x, w, b, stride=ctx.attr("strides", 1), dilation=ctx.attr("dilations", 1),
                 groups=ctx.attr("group", 1))]


def _softmax_impl(fn: Callable[..., torch.Tensor]) -> OpImpl:
    def impl(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
        """Along ``axis`` (default -1) from opset 13; before, over the 2-D coercion at axis 1."""
        x = inputs[0]
        if ctx.opset >= 13:
            return [fn(x, dim=norm_axis(ctx.attr("axis", -1), x.dim()))]
        axis = norm_axis(ctx.attr("axis", 1), x.dim())
        rows = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return [fn(rows, dim=1).reshape(x.shape)]

    @specializes(impl)
    def specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Callable[..., torch.Tensor] | None:
        axis = ctx.attr("axis", -1)
        return None if constants or ctx.opset < 13 else (lambda x: fn(x, dim=axis))

    return impl


register("Softmax", since=1)(_softmax_impl(torch.softmax))
register("LogSoftmax", since=1)(_softmax_impl(torch.log_softmax))


def _norm_args(ctx: OpContext, x: torch.Tensor) -> tuple[tuple[int, ...], float, torch.dtype]:
    """Normalized axes (``axis`` to the end), epsilon, and stash (compute) dtype."""
    axis = norm_axis(ctx.attr("axis", -1), x.dim())
    return (
        tuple(range(axis, x.dim())),
        ctx.attr("epsilon", 1e-5),
        torch_dtype(ctx.attr("stash_type", 1)),
    )


@register("LayerNormalization", since=17)
def _layer_norm(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """Outputs Y, Mean, InvStdDev (the last two in the stash type, reduced dims kept)."""
    x, scale, bias = inputs[0], inputs[1], optional_input(inputs, 2)
    dims, eps, stash = _norm_args(ctx, x)
    xs = x.to(stash)
    mean = xs.mean(dims, keepdim=True)
    deviation = xs - mean
    inv_std = torch.reciprocal(torch.sqrt(deviation.square().mean(dims, keepdim=True) + eps))
    y = (deviation * inv_std).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std][: max(ctx.num_outputs, 1)]


@register("RMSNormalization", since=23)
def _rms_norm(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """X / sqrt(mean(X^2) + epsilon) * scale, computed in the stash type."""
    x, scale = inputs
    dims, eps, stash = _norm_args(ctx, x)
    xs = x.to(stash)
    rms = torch.sqrt(xs.square().mean(dims, keepdim=True) + eps)
    return [(xs / rms).to(x.dtype) * scale]


@register("Gelu", since=20)
def _gelu(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [F.gelu(inputs[0], approximate=ctx.attr("approximate", "none"))]
