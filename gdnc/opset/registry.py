"""Registry of op implementations used by the executor.

An implementation is ``fn(ctx: OpContext, inputs: list[Tensor | None]) -> list[Tensor]``:
``inputs`` follow the node's input order (``None`` for an omitted optional input) and the
returned list has one tensor per node output (trailing optional outputs may be dropped).
Attributes arrive decoded: int, float, str, list of those, numpy array (TENSOR), or an IR
``Graph`` (GRAPH). Implementations are registered per (domain, op_type) with the first
opset version whose semantics they implement; the lookup picks the newest version that is
<= the model's opset for that domain.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gdnc.errors import UnsupportedOpError


@dataclass(frozen=True)
class OpContext:
    """What an implementation may know about the node it runs."""

    op_type: str
    domain: str
    attrs: Mapping[str, Any]
    opset: int
    num_outputs: int
    node_name: str = ""
    num_inputs: int = 0  # as the node lists them, omitted optional ones included
    run_subgraph: Callable[..., list[torch.Tensor]] | None = field(default=None, repr=False)
    # input positions whose tensors this call owns and may overwrite (nothing reads them after)
    donated: frozenset[int] = frozenset()

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


OpImpl = Callable[[OpContext, list[Any]], list[torch.Tensor]]
# (the node's context, its constant inputs by position: None for an omitted one, a host value at a
# ``host_inputs`` position, else the value on the run's device) -> a function of the node's other
# inputs, in order, returning its one output, exactly as the implementation would; None: no
# such function for this node (the implementation runs)
Specializer = Callable[[OpContext, Mapping[int, Any]], Callable[..., Any] | None]

_REGISTRY: dict[tuple[str, str], list[tuple[int, OpImpl]]] = {}
_HOST_INPUTS: dict[tuple[str, str], frozenset[int]] = {}
_SPECIALIZERS: dict[OpImpl, Specializer] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(op_type: str, domain: str = "", since: int = 1,
             host_inputs: tuple[int, ...] = ()) -> Callable[[OpImpl], OpImpl]:
    """Decorator: register ``fn`` for ``domain::op_type`` from opset ``since`` on.

    ``host_inputs``: input positions the op reads as Python numbers (shapes, axes, bounds,
    counts); the executor hands their constant values over on the host, so reading them never
    waits for the device."""

    def deco(fn: OpImpl) -> OpImpl:
        if host_inputs:
            _HOST_INPUTS[(_norm_domain(domain), op_type)] = frozenset(host_inputs)
        versions = _REGISTRY.setdefault((_norm_domain(domain), op_type), [])
        bisect.insort(versions, (since, fn), key=lambda item: item[0])
        return fn

    return deco


def lookup(domain: str, op_type: str, opset: int) -> OpImpl:
    """Implementation of ``domain::op_type`` at ``opset``; UnsupportedOpError if none."""
    versions = _REGISTRY.get((_norm_domain(domain), op_type))
    name = f"{domain}::{op_type}" if _norm_domain(domain) else op_type
    if not versions:
        raise UnsupportedOpError(f"op {name} is not supported by the gdnc runtime")
    usable = [fn for since, fn in versions if since <= opset]
    if not usable:
        raise UnsupportedOpError(f"op {name} at opset {opset} is not supported by the gdnc runtime")
    return usable[-1]


def host_inputs(domain: str, op_type: str) -> frozenset[int]:
    """Input positions of ``domain::op_type`` read as host numbers (see ``register``)."""
    return _HOST_INPUTS.get((_norm_domain(domain), op_type), frozenset())


def specializes(impl: OpImpl) -> Callable[[Specializer], Specializer]:
    """Decorator: register the ``Specializer`` of ``impl`` (what a compiled graph calls instead
    of ``impl`` for one node whose attributes and constant inputs are known)."""

    def deco(fn: Specializer) -> Specializer:
        _SPECIALIZERS[impl] = fn
        return fn

    return deco


def specialized(impl: OpImpl, ctx: OpContext, constants: Mapping[int, Any]) -> Callable[..., Any] | None:
    """The function ``impl``'s specializer makes for a node (see ``Specializer``), or None."""
    fn = _SPECIALIZERS.get(impl)
    return None if fn is None or ctx.num_outputs != 1 else fn(ctx, constants)


def with_constants(fn: Callable[..., Any], constants: Mapping[int, Any], arity: int) -> Callable[..., Any]:
    """``fn`` of ``arity`` positional inputs as a function of those not in ``constants``."""
    if not constants:
        return fn
    if set(constants) == set(range(1, arity)):
        rest = tuple(constants[i] for i in range(1, arity))
        return lambda x: fn(x, *rest)

    def call(*dynamic: Any) -> Any:
        it = iter(dynamic)
        return fn(*(constants[i] if i in constants else next(it) for i in range(arity)))

    return call


def direct(fn: Callable[..., Any], arity: int) -> Specializer:
    """The specializer of an op computing ``fn(*inputs)`` of ``arity`` required inputs."""

    def specializer(ctx: OpContext, constants: Mapping[int, Any]) -> Callable[..., Any] | None:
        if any(v is None for v in constants.values()) or len(constants) >= arity:
            return None
        return with_constants(fn, constants, arity)

    return specializer


def supported_ops() -> dict[str, list[int]]:
    """Coverage table: ``"domain::op" -> [since versions]``."""
    return {
        (f"{d}::{op}" if d else op): [since for since, _ in impls]
        for (d, op), impls in sorted(_REGISTRY.items())
    }
