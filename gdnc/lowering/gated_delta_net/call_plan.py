"""What one ``gated_delta_net`` call checks and decides before its kernels run, kept for the next
call that would check and decide exactly the same.

A model's layers call the op one after another with the same index tensors (``cu_seqlens``, the
slots) and operands of the same shapes, so the host work of a call (validation, which needs
the index values on the host; the backend's choice; the launch index tensors) is the same for
all of them. ``CallPlan`` is that work's result; ``plan_for`` returns the previous call's plan
when the new call's key matches: equal index values (read back to the host, as validation
reads them anyway), equal shapes, strides, dtypes, devices and grad flags of every operand and
of the index tensors, and equal options. Anything else is validated afresh, so errors are
raised exactly as before. One plan is kept per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gdnc.lowering.gated_delta_net.backends import Backend
from gdnc.lowering.gated_delta_net.checks import GdnShapes


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a call: its algorithm, sequences and index tensors [4, n] (starts,
    lengths, in slots, out slots) on the call's device."""

    algorithm: str
    indices: torch.Tensor
    max_len: int


@dataclass(frozen=True)
class CallPlan:
    """A validated call: its shapes, backend, the slots to snapshot first (None: read the pool
    in place), and its launches."""

    shapes: GdnShapes
    backend: Backend
    snapshot: torch.Tensor | None
    launches: tuple[Launch, ...]


_Key = tuple
_last = threading.local()


def _operand_key(x: torch.Tensor | None) -> tuple | None:
    if x is None:
        return None
    return (x.shape, x.stride(), x.dtype, x.device, x.requires_grad and (True, x.is_leaf))


def plan_for(operands: Sequence[torch.Tensor | None], indices: Sequence[torch.Tensor | None],
             values: Sequence[Sequence[int] | None], options: tuple,
             make: Callable[[], CallPlan]) -> CallPlan:
    """The plan of a call of ``operands`` (float tensors), ``indices`` (cu_seqlens and slot
    tensors) holding ``values`` and hashable ``options``: the last one made on this thread if
    the key matches (see the module), else ``make()``, then kept."""
    key: _Key = (tuple(_operand_key(x) for x in (*operands, *indices)), options,
                 torch.is_grad_enabled(), tuple(None if v is None else tuple(v) for v in values))
    kept = getattr(_last, "entry", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    plan = make()
    _last.entry = (key, plan)
    return plan
