"""Argument validation shared by every GatedDeltaNet backend (SPEC §2.2).

Index values are read as Python ints (arbitrary precision) from int64 tensors, so no slot or
token offset is ever truncated to 32 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from gdnc.errors import OpArgumentError
from gdnc.lowering.host_values import host_copy
from gdnc.opset.gated_delta_net import HEAD_MAPS, STATE_LAYOUTS


@dataclass(frozen=True)
class GdnShapes:
    """Sizes of one validated call.

    T_total tokens, N sequences, P pool slots, H key heads, HV value heads (``group`` = HV // H
    value heads per key head), key dim K, value dim V; ``kda`` when g is per key row.
    """

    T_total: int
    N: int
    P: int
    H: int
    HV: int
    K: int
    V: int
    kda: bool
    seq_starts: tuple[int, ...] = ()
    seq_lens: tuple[int, ...] = ()
    in_slots: tuple[int, ...] = ()  # resolved: default arange(N)
    out_slots: tuple[int, ...] = ()  # resolved: default in_slots

    @property
    def group(self) -> int:
        return self.HV // self.H


def _fail(name: str, problem: str) -> OpArgumentError:
    return OpArgumentError(f"gated_delta_net: {name}: {problem}")


def _shape(x: torch.Tensor) -> list[int]:
    return list(x.shape)


def _check_float(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise _fail(name, f"dtype {x.dtype} is not a floating-point dtype")


def _check_shape(name: str, x: torch.Tensor, expected: list[int], what: str) -> None:
    if _shape(x) != expected:
        raise _fail(name, f"shape {_shape(x)} does not match {what} {expected}")


def _check_device(named: dict[str, torch.Tensor]) -> None:
    devices = {name: x.device for name, x in named.items()}
    first = next(iter(devices))
    for name, device in devices.items():
        if device != devices[first]:
            raise _fail(name, f"is on {device} but {first} is on {devices[first]}: "
                              "every float tensor must be on one device")


def _check_writable(name: str, x: torch.Tensor) -> None:
    """A tensor written in place must give every element its own address: an expanded or
    otherwise self-overlapping view (stride 0, interleaved strides) would make writes race.
    Strided (non-contiguous) views are fine: the kernels address them through their strides."""
    extent = 1  # elements spanned by the dims checked so far
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz > 1):
        if stride < extent:
            raise _fail(name, f"shape {_shape(x)} with strides {list(x.stride())} has elements "
                              "sharing memory (an expanded view?); it is written in place, so "
                              "pass a tensor that owns its memory (e.g. x.clone())")
        extent += stride * (size - 1)


def _check_grad(name: str, x: torch.Tensor) -> None:
    """A tensor written in place must not be a leaf that requires grad while autograd records:
    autograd forbids writing one."""
    if x.requires_grad and x.is_leaf and torch.is_grad_enabled():
        raise _fail(name, f"requires grad and is written in place, which autograd forbids on a leaf "
                          f"tensor; pass {name}.detach() (updated without gradients) or call under "
                          "torch.no_grad()")


def _check_index(name: str, idx: torch.Tensor | None, N: int) -> None:
    if idx is None:
        return
    if idx.dtype != torch.int64:
        raise _fail(name, f"dtype {idx.dtype} must be torch.int64")
    if _shape(idx) != [N]:
        raise _fail(name, f"shape {_shape(idx)} must be [N] = [{N}]")


def _to_host(*tensors: torch.Tensor | None) -> list[list[int] | None]:
    """The values of 1-D int64 tensors: the caller's host copies where it gave them
    (``host_values.known``), else read back with one device-to-host transfer."""
    copies = [None if x is None else host_copy(x) for x in tensors]
    if all(c is not None for x, c in zip(tensors, copies) if x is not None):
        return [None if c is None else c.tolist() for c in copies]
    given = [x for x in tensors if x is not None]
    if len({x.device for x in given}) > 1 or all(x.device.type == "cpu" for x in given):
        values = [v for x in given for v in x.tolist()]  # no transfer to save on the host
    else:
        values = torch.cat(given).tolist() if given else []
    out: list[list[int] | None] = []
    pos = 0
    for x in tensors:
        n = 0 if x is None else x.numel()
        out.append(None if x is None else values[pos:pos + n])
        pos += n
    return out


def index_values(*tensors: torch.Tensor | None) -> list[list[int] | None] | None:
    """The values of index tensors as ``validate`` reads them (one transfer), None unless every
    given one is 1-D int64 and all are on one device (``validate`` then says what is wrong)."""
    given = [x for x in tensors if x is not None]
    if any(x.dtype != torch.int64 or x.dim() != 1 for x in given) or len({x.device for x in given}) > 1:
        return None
    return _to_host(*tensors)


def _check_slots(name: str, values: list[int] | None, P: int) -> None:
    bad = [s for s in values or [] if s >= P]
    if bad:
        raise _fail(name, f"slot {bad[0]} is out of range for a pool of {P} slots")


def validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state_pool: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_in_index: torch.Tensor | None,
    state_out_index: torch.Tensor | None,
    *,
    head_map: str,
    state_layout: str,
    token_states: torch.Tensor | None,
    host: list[list[int] | None] | None = None,
) -> GdnShapes:
    """Check a packed-layout call against SPEC §2.2; raise OpArgumentError on the first problem.

    q, k [T_total, H, K]; v [T_total, HV, V]; g [T_total, HV] or [T_total, HV, K]; beta
    [T_total, HV]; state_pool [P, HV, K, V] ("kv") or [P, HV, V, K] ("vk"); cu_seqlens int64
    [N+1]; state_in_index / state_out_index int64 [N] or None; token_states None or
    [T_total, HV, K, V] ("kv") / [T_total, HV, V, K] ("vk"). Float tensors may be any
    floating dtype. ``host``: the index values already read (``index_values``).
    """
    if head_map not in HEAD_MAPS:
        raise _fail("head_map", f"{head_map!r} is not one of {list(HEAD_MAPS)}")
    if state_layout not in STATE_LAYOUTS:
        raise _fail("state_layout", f"{state_layout!r} is not one of {list(STATE_LAYOUTS)}")
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state_pool": state_pool}
    if token_states is not None:
        named["token_states"] = token_states
    for name, x in named.items():
        _check_float(name, x)
    _check_device(named)
    _check_writable("state_pool", state_pool)
    _check_grad("state_pool", state_pool)
    if token_states is not None:
        _check_writable("token_states", token_states)
        _check_grad("token_states", token_states)

    if q.dim() != 3:
        raise _fail("q", f"shape {_shape(q)} must have rank 3 [T_total, H, K]")
    T, H, K = _shape(q)
    if H == 0 or K == 0:
        raise _fail("q", f"shape {_shape(q)} has an empty head or key dimension")
    _check_shape("k", k, [T, H, K], "q's shape")
    if v.dim() != 3:
        raise _fail("v", f"shape {_shape(v)} must have rank 3 [T_total, HV, V]")
    _, HV, V = _shape(v)
    _check_shape("v", v, [T, HV, V], "[T_total, HV, V] with T_total from q")
    if HV == 0 or V == 0:
        raise _fail("v", f"shape {_shape(v)} has an empty head or value dimension")
    if HV % H:
        raise _fail("v", f"HV = {HV} value heads is not a multiple of H = {H}")
    if _shape(g) not in ([T, HV], [T, HV, K]):
        raise _fail("g", f"shape {_shape(g)} is neither [T_total, HV] = {[T, HV]} "
                         f"nor [T_total, HV, K] = {[T, HV, K]}")
    _check_shape("beta", beta, [T, HV], "[T_total, HV]")
    state_dims = [K, V] if state_layout == "kv" else [V, K]
    if state_pool.dim() != 4:
        raise _fail("state_pool", f"shape {_shape(state_pool)} must have rank 4 [P, HV, ...]")
    P = state_pool.shape[0]
    _check_shape("state_pool", state_pool, [P, HV, *state_dims],
                 f"the {state_layout!r} layout of [P, HV, ...]")
    if token_states is not None:
        _check_shape("token_states", token_states, [T, HV, *state_dims],
                     f"the {state_layout!r} layout of [T_total, HV, ...]")

    if cu_seqlens.dtype != torch.int64:
        raise _fail("cu_seqlens", f"dtype {cu_seqlens.dtype} must be torch.int64")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0:
        raise _fail("cu_seqlens", f"shape {_shape(cu_seqlens)} must be [N+1] with N >= 0")
    N = cu_seqlens.numel() - 1
    _check_index("state_in_index", state_in_index, N)
    _check_index("state_out_index", state_out_index, N)
    host = host or _to_host(cu_seqlens, state_in_index, state_out_index)
    cu, ins, outs = cast(list[int], host[0]), host[1], host[2]
    if cu[0] != 0:
        raise _fail("cu_seqlens", f"must start at 0, starts at {cu[0]}")
    for n in range(len(cu) - 1):
        if cu[n + 1] < cu[n]:
            raise _fail("cu_seqlens", f"must be non-decreasing, decreases at {n}: "
                                      f"{cu[n]} -> {cu[n + 1]}")
    if cu[-1] != T:
        raise _fail("cu_seqlens", f"ends at {cu[-1]} but T_total = {T}")

    _check_slots("state_in_index", ins, P)
    if ins is None and N > P:
        raise _fail("state_in_index", f"default slots 0..{N - 1} do not fit a pool of {P} slots")
    _check_slots("state_out_index", outs, P)
    name = "state_out_index" if outs is not None else "state_in_index (the default out slots)"
    seen: set[int] = set()
    for slot in outs if outs is not None else ins or []:
        if slot in seen:
            raise _fail(name, f"slot {slot} is written by more than one sequence")
        if slot >= 0:
            seen.add(slot)
    in_slots = tuple(ins) if ins is not None else tuple(range(N))
    return GdnShapes(
        T_total=T, N=N, P=P, H=H, HV=HV, K=K, V=V, kda=g.dim() == 3,
        seq_starts=tuple(cu[:-1]), seq_lens=tuple(b - a for a, b in zip(cu, cu[1:])),
        in_slots=in_slots, out_slots=tuple(outs) if outs is not None else in_slots,
    )
