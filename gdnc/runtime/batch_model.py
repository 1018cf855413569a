"""What the scheduler (``gdnc.runtime.generation``) needs of a model: a state pool and a batch
forward. Every model family's model provides it."""

from __future__ import annotations

from typing import Protocol

import torch

from gdnc.runtime.batch_plan import Limits
from gdnc.runtime.state_pool import Entry, StatePool


class BatchModel(Protocol):
    """A model serving batches of sequences that live in slots of its ``StatePool``."""

    limits: Limits  # most new tokens per sequence (``chunk``) and attention scores per run

    def new_pool(self, slots: int = 1, n_ctx: int | None = None, kept_logits: int = 0) -> StatePool:
        """A pool of ``slots`` sequences of context ``n_ctx`` (None: the model's default)."""
        ...

    def forward(self, pool: StatePool, batch: list[Entry], all_logits: bool = False) -> list[torch.Tensor]:
        """Run ``batch`` (mixed prefill/decode), update ``pool``; per entry the logits of its last
        token [n_vocab] (``all_logits``: of every new token, [T_n, n_vocab])."""
        ...
