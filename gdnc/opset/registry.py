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
    run_subgraph: Callable[..., list[torch.Tensor]] | None = field(default=None, repr=False)
    # input positions whose tensors this call owns and may overwrite (nothing reads them after)
    donated: frozenset[int] = frozenset()

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


OpImpl = Callable[[OpContext, list[Any]], list[torch.Tensor]]

_REGISTRY: dict[tuple[str, str], list[tuple[int, OpImpl]]] = {}
_HOST_INPUTS: dict[tuple[str, str], frozenset[int]] = {}


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


def supported_ops() -> dict[str, list[int]]:
    """Coverage table: ``"domain::op" -> [since versions]``."""
    return {
        (f"{d}::{op}" if d else op): [since for since, _ in impls]
        for (d, op), impls in sorted(_REGISTRY.items())
    }
