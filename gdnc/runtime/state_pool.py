"""Per-sequence state that outlives a forward call: pool tensors of one slot (row) per sequence.

A model family decides the tensors (name -> shape, dim 0 = slots; e.g. delta-net and conv
states, KV caches); the pool owns them (float32, zeroed), the slot allocator and, per slot,
the tokens it has seen (``n_past``). A batch names each sequence by its slot (``Entry``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gdnc.errors import InputError


@dataclass(frozen=True)
class Entry:
    """One sequence of a batch: its pool slot and its new tokens."""

    slot: int
    tokens: tuple[int, ...]


class PoolFullError(InputError):
    """Every slot of the state pool holds a live sequence."""


class StatePool:
    """Tensors ``shapes`` [slots, ...] (float32, on ``device``) for sequences of at most ``n_ctx``
    tokens, and which slot holds what: ``live[slot]``, ``n_past[slot]`` (tokens seen).
    InputError when the shapes disagree on the slot count, for < 1 slot or context, or when the
    tensors cannot be allocated."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], n_ctx: int, device: str | torch.device) -> None:
        counts = {shape[0] for shape in shapes.values()}
        if len(counts) != 1:
            raise InputError(f"state pool: every tensor needs the same slot count (dim 0), "
                             f"got {sorted(counts)}")
        (slots,) = counts
        if slots < 1 or n_ctx < 1:
            raise InputError(f"state pool: need >= 1 slot and context >= 1 (got {slots}, {n_ctx})")
        self.slots, self.n_ctx = slots, n_ctx
        try:
            self.tensors = {name: torch.zeros(shape, device=device) for name, shape in shapes.items()}
        except (RuntimeError, MemoryError) as exc:
            gib = sum(math.prod(s) for s in shapes.values()) * 4 / 2**30
            raise InputError(f"state pool: {gib:.1f} GiB for {slots} slot(s) of context {n_ctx} cannot "
                             f"be allocated on {device}; lower --parallel or --ctx") from exc
        self.n_past = [0] * slots
        self.live = [False] * slots

    def allocate(self) -> int:
        """A free slot, zeroed; PoolFullError when every slot is live."""
        for slot, live in enumerate(self.live):
            if not live:
                with torch.inference_mode():  # the pools are the executor's outputs
                    for t in self.tensors.values():
                        t[slot].zero_()
                self.live[slot], self.n_past[slot] = True, 0
                return slot
        raise PoolFullError(f"state pool full: all {self.slots} slots hold live sequences")

    def release(self, slot: int) -> None:
        self.check_live(slot)
        self.live[slot] = False

    def free_slots(self) -> int:
        return self.live.count(False)

    def check_live(self, slot: int) -> None:
        """InputError unless ``slot`` is a slot of this pool holding a live sequence."""
        if not 0 <= slot < self.slots or not self.live[slot]:
            raise InputError(f"slot {slot} is not a live slot of the state pool (0..{self.slots - 1})")
