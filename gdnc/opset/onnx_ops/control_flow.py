"""Control flow: If, Loop and Scan (opset 9+), each running its subgraph(s) through
``OpContext.run_subgraph``, which sees the enclosing scopes' values the subgraphs read."""

from __future__ import annotations

from typing import Any

import torch

from gdnc.errors import ShapeError, UnsupportedOpError
from gdnc.ir.graph import Graph
from gdnc.opset.onnx_ops.dtypes import torch_dtype
from gdnc.opset.onnx_ops.shape_ops import norm_axis
from gdnc.opset.registry import OpContext, register


def _run(ctx: OpContext, graph: Graph, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    assert ctx.run_subgraph is not None  # the executor binds it for every node with subgraphs
    return ctx.run_subgraph(graph, inputs)


def _flag(x: torch.Tensor, what: str) -> bool:
    if x.numel() != 1:
        raise ShapeError(f"{what} has {x.numel()} elements, not one")
    return bool(x.reshape(()).item())


def _stacked(parts: list[torch.Tensor], body: Graph, name: str, axis: int,
             device: torch.device) -> torch.Tensor:
    """``parts`` stacked along a new ``axis`` (an empty tensor of the body's declared type when
    the body never ran)."""
    if parts:
        return torch.stack(parts, dim=norm_axis(axis, parts[0].dim() + 1))
    val = body.value(name)
    dtype = torch_dtype(val.dtype) if val.dtype else torch.float32
    shape = list(val.static_shape or ())
    shape.insert(norm_axis(axis, len(shape) + 1), 0)
    return torch.empty(shape, dtype=dtype, device=device)


@register("If", since=1)
def _if(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    branch = "then_branch" if _flag(inputs[0], "If condition") else "else_branch"
    return _run(ctx, ctx.attr(branch), [])


@register("Loop", since=1)
def _loop(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """``for i in range(M) while cond``: body(i, cond, carried...) -> (cond, carried..., scans...)."""
    body: Graph = ctx.attr("body")
    trip, cond, carried = inputs[0], inputs[1] if len(inputs) > 1 else None, list(inputs[2:])
    if trip is None and cond is None:
        raise UnsupportedOpError("Loop with neither a trip count nor a condition never ends")
    device = next((x.device for x in inputs if x is not None), torch.device("cpu"))
    limit = None if trip is None else int(trip.reshape(()).item())
    going = True if cond is None else _flag(cond, "Loop condition")
    scans: list[list[torch.Tensor]] = [[] for _ in body.outputs[1 + len(carried):]]
    i = 0
    while going and (limit is None or i < limit):
        step = torch.tensor(i, dtype=torch.int64, device=device)
        outs = _run(ctx, body, [step, torch.tensor(going, device=device), *carried])
        if cond is not None:  # without a condition input the body's condition is ignored
            going = _flag(outs[0], "Loop body condition")
        carried = outs[1:1 + len(carried)]
        for acc, value in zip(scans, outs[1 + len(carried):]):
            acc.append(value)
        i += 1
    names = body.outputs[1 + len(carried):]
    return carried + [_stacked(acc, body, name, 0, device) for acc, name in zip(scans, names)]


@register("Scan", since=9)
def _scan(ctx: OpContext, inputs: list[Any]) -> list[torch.Tensor]:
    """States carried through the body over slices of the scan inputs along their scan axes."""
    body: Graph = ctx.attr("body")
    m = int(ctx.attr("num_scan_inputs"))
    n = len(inputs) - m
    states, xs = list(inputs[:n]), inputs[n:]
    axes = [norm_axis(a, x.dim()) for a, x in zip(ctx.attr("scan_input_axes", [0] * m), xs)]
    lengths = {x.shape[a] for x, a in zip(xs, axes)}
    if len(lengths) != 1:
        raise ShapeError(f"Scan inputs have different sequence lengths {sorted(lengths)}")
    (length,) = lengths
    in_reverse = ctx.attr("scan_input_directions", [0] * m)
    k = len(body.outputs) - n
    out_axes = ctx.attr("scan_output_axes", [0] * k)
    out_reverse = ctx.attr("scan_output_directions", [0] * k)
    scans: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for t in range(length):
        slices = [x.select(a, length - 1 - t if rev else t) for x, a, rev in zip(xs, axes, in_reverse)]
        outs = _run(ctx, body, [*states, *slices])
        states = outs[:n]
        for acc, value in zip(scans, outs[n:]):
            acc.append(value)
    device = next((x.device for x in inputs if x is not None), torch.device("cpu"))
    stacked = [_stacked(acc[::-1] if rev else acc, body, name, axis, device)
               for acc, name, axis, rev in zip(scans, body.outputs[n:], out_axes, out_reverse)]
    return states + stacked
