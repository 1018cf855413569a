"""Elementwise ops: unary math, broadcasting binary/compare/logic, variadic, casts."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from gdnc.errors import UnsupportedOpError
from gdnc.opset.onnx_ops.dtypes import torch_dtype
from gdnc.opset.onnx_ops.shape_ops import as_ints, optional_input
from gdnc.opset.registry import OpContext, OpImpl, direct, register, specializes

Fn = Callable[..., torch.Tensor]


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer Div truncates toward zero (C semantics, as onnxruntime does)."""
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The result has the base's type, whatever the exponent's type."""
    return torch.pow(a, b).to(a.dtype)


# name -> (torch function, first opset of the semantics implemented)
_UNARY: dict[str, tuple[Fn, int]] = {
    "Sqrt": (torch.sqrt, 6),
    "Reciprocal": (torch.reciprocal, 6),
    "Exp": (torch.exp, 6),
    "Log": (torch.log, 6),
    "Neg": (torch.neg, 6),
    "Abs": (torch.abs, 6),
    "Tanh": (torch.tanh, 6),
    "Sigmoid": (torch.sigmoid, 6),
    "Softplus": (F.softplus, 1),
    "Relu": (torch.relu, 6),
    "Erf": (torch.erf, 9),
    "Sin": (torch.sin, 7),
    "Cos": (torch.cos, 7),
    "Floor": (torch.floor, 6),
    "Ceil": (torch.ceil, 6),
    "Round": (torch.round, 11),
    "Sign": (torch.sign, 9),
    "Not": (torch.logical_not, 1),
    "IsNaN": (torch.isnan, 9),
    "Identity": (lambda x: x, 1),
}

_BINARY: dict[str, tuple[Fn, int]] = {
    "Add": (torch.add, 7),
    "Sub": (torch.sub, 7),
    "Mul": (torch.mul, 7),
    "Div": (_div, 7),
    "Pow": (_pow, 7),
    "Equal": (torch.eq, 7),
    "Less": (torch.lt, 7),
    "LessOrEqual": (torch.le, 12),
    "Greater": (torch.gt, 7),
    "GreaterOrEqual": (torch.ge, 12),
    "And": (torch.logical_and, 7),
    "Or": (torch.logical_or, 7),
    "Xor": (torch.logical_xor, 7),
}

_VARIADIC: dict[str, tuple[Fn, int]] = {
    "Max": (torch.maximum, 6),
    "Min": (torch.minimum, 6),
}


def _unary(fn: Fn) -> OpImpl:
    def impl(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
        return [fn(inputs[0])]

    specializes(impl)(direct(fn, 1))
    return impl


def _binary(fn: Fn) -> OpImpl:
    def impl(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
        return [fn(inputs[0], inputs[1])]

    specializes(impl)(direct(fn, 2))
    return impl


def _variadic(fn: Fn) -> OpImpl:
    return lambda ctx, inputs: [functools.reduce(fn, inputs)]


def _register_tables() -> None:
    for table, make in ((_UNARY, _unary), (_BINARY, _binary), (_VARIADIC, _variadic)):
        for name, (fn, since) in table.items():
            register(name, since=since)(make(fn))


_register_tables()


@register("Mod", since=10)
def _mod(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """fmod=0: remainder has the divisor's sign; fmod=1: the dividend's (C fmod)."""
    fn = torch.fmod if ctx.attr("fmod", 0) else torch.remainder
    return [fn(inputs[0], inputs[1])]


@register("Clip", since=6)
def _clip(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """Bounds are the min/max attributes before opset 11, optional inputs after."""
    x = inputs[0]
    if ctx.opset < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        low, high = optional_input(inputs, 1), optional_input(inputs, 2)
    if low is None and high is None:
        return [x]
    return [torch.clamp(x, low, high)]


@register("Where", since=9)
def _where(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    cond, x, y = inputs
    return [torch.where(cond.bool(), x, y)]


@register("IsInf", since=10)
def _isinf(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    x = inputs[0]
    out = torch.zeros_like(x, dtype=torch.bool)
    if ctx.attr("detect_positive", 1):
        out |= torch.isposinf(x)
    if ctx.attr("detect_negative", 1):
        out |= torch.isneginf(x)
    return [out]


@register("Cast", since=6)
def _cast(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """Float -> int truncates toward zero; anything -> bool is ``!= 0``."""
    return [inputs[0].to(torch_dtype(ctx.attr("to")))]


@specializes(_cast)
def _cast_specialized(ctx: OpContext, constants: Mapping[int, Any]) -> Fn | None:
    dtype = torch_dtype(ctx.attr("to"))
    return None if constants else (lambda x: x.to(dtype))


@register("CastLike", since=15)
def _cast_like(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    return [inputs[0].to(inputs[1].dtype)]


@register("Dropout", since=7)
def _dropout(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """Inference only: identity and a mask of kept elements (bool from opset 10).

    Before opset 12 the mask is all zeros, as onnxruntime writes it; from 12 all true,
    as the spec's reference says.
    """
    x = inputs[0]
    training = optional_input(inputs, 2) if ctx.opset >= 12 else None
    if training is not None and as_ints(training)[0]:
        raise UnsupportedOpError("Dropout with training_mode=1 is not supported (inference only)")
    mask_dtype = torch.bool if ctx.opset >= 10 else x.dtype
    mask = (torch.ones_like if ctx.opset >= 12 else torch.zeros_like)(x, dtype=mask_dtype)
    return [x, mask][: max(ctx.num_outputs, 1)]
