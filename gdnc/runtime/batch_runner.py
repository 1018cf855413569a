"""Run one mixed prefill/decode batch of pooled sequences through a model family's graphs.

The family supplies its batch graphs and their index inputs; ``BatchRunner.forward`` checks the
batch, splits it into runs within ``Limits`` (``batch_plan``: long prompts go in chunks), runs
each, swaps the updated pools in and counts each slot's tokens. A batch graph's contract:
inputs = the family's index inputs + every pool tensor (by name); outputs = ``logits``
[O, n_vocab] (one row per sequence, or per new token with ``all_logits``) and every pool after
the batch (name + ``.out``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from gdnc.errors import InputError
from gdnc.ir.graph import Model
from gdnc.runtime.batch_plan import Limits, plan_runs
from gdnc.runtime.executor import Executor
from gdnc.runtime.state_pool import Entry, StatePool

# the index inputs of one run: (pool, its entries, all_logits, key bucket) -> feeds by input
# name, the attention's key dim padded to a multiple of the key bucket
Feeds = Callable[[StatePool, list[Entry], bool, int], dict[str, np.ndarray]]
# the executor of a run, by the new-token counts of its sequences
Graphs = Callable[[tuple[int, ...]], Executor]


def pooled_executor(model: Model, device: str | torch.device,
                    bound: Mapping[str, object] | None = None, compiled: bool = False) -> Executor:
    """An executor of a batch graph that may update its pool inputs (those with a ``.out``
    output) in place: ``BatchRunner`` replaces them by their ``.out`` outputs. ``bound``: the
    values of its weight inputs, ``compiled``: prepared calls, not op by op (``Executor``)."""
    graph = model.graph
    return Executor(model, device, donate=[n for n in graph.inputs if f"{n}.out" in graph.outputs],
                    bound=bound, compiled=compiled)


KEY_BUCKET = 256  # a padded decode run's attention keys: a multiple of this (one shape for 256 steps)


def decode_bucket(n: int, slots: int) -> int:
    """The sequences a decode run of ``n`` is padded to: the next power of two, at most the
    pool's ``slots``."""
    return min(1 << (n - 1).bit_length(), slots)


def padded_decode(pool: StatePool, batch: list[Entry]) -> list[Entry]:
    """``batch`` (one new token each) padded towards ``decode_bucket`` sequences by entries of
    token 0 in free slots of ``pool`` (their contents are scratch: ``allocate`` zeroes a slot),
    so that runs of a few shapes serve every batch size."""
    free = [slot for slot, live in enumerate(pool.live) if not live]
    pads = free[:decode_bucket(len(batch), pool.slots) - len(batch)]
    for slot in pads:
        pool.n_past[slot] = 0
    return batch + [Entry(slot, (0,)) for slot in pads]


@dataclass(frozen=True)
class BatchRunner:
    """``forward`` for a model of ``n_vocab`` tokens whose attention has ``n_head`` heads (they
    bound a run's score tensor). Decode runs are padded (``padded_decode``, keys to
    ``KEY_BUCKET``) where the executor replays CUDA graphs (``Executor.graphs``), or with
    ``pad_decode``."""

    n_vocab: int
    n_head: int
    feeds: Feeds
    graphs: Graphs
    pad_decode: bool = False

    def forward(self, pool: StatePool, batch: list[Entry], limits: Limits,
                all_logits: bool = False) -> list[torch.Tensor]:
        """Run ``batch``, update ``pool``; per entry the logits of its last token [n_vocab]
        (``all_logits``: of every new token, [T_n, n_vocab]), in runs within ``limits``."""
        self._check(pool, batch)
        runs = plan_runs([len(e.tokens) for e in batch], [pool.n_past[e.slot] for e in batch],
                         self.n_head, limits)
        if len(runs) == 1:
            return self._run(pool, batch, all_logits)
        pieces: list[list[torch.Tensor]] = [[] for _ in batch]
        for run in runs:
            part = [Entry(batch[p.index].slot, batch[p.index].tokens[p.start:p.end]) for p in run]
            for p, logits in zip(run, self._run(pool, part, all_logits)):
                pieces[p.index].append(logits)
        return [torch.cat(rows) if all_logits else rows[-1] for rows in pieces]

    def _run(self, pool: StatePool, batch: list[Entry], all_logits: bool) -> list[torch.Tensor]:
        """``forward`` of one run."""
        lengths = tuple(len(e.tokens) for e in batch)
        ex = self.graphs(lengths)
        padded = (self.pad_decode or ex.graphs is not None) and not all_logits and max(lengths) == 1
        entries = padded_decode(pool, batch) if padded else batch
        feeds = self.feeds(pool, entries, all_logits, KEY_BUCKET if padded else 1)
        wanted = {n: feeds[n] for n in ex.input_names if n in feeds}
        if padded and ex.graphs is not None:
            outs = ex.run_replayed(wanted, pool.tensors)
        else:
            outs = ex.run({**wanted, **pool.tensors})
        for name in pool.tensors:
            pool.tensors[name] = outs[f"{name}.out"]
        for e in batch:
            pool.n_past[e.slot] += len(e.tokens)
        logits = outs["logits"][:len(batch)] if padded else outs["logits"]  # no pads' rows
        if all_logits:
            return list(torch.split(logits, list(lengths)))
        return list(logits)

    def _check(self, pool: StatePool, batch: list[Entry]) -> None:
        if not batch:
            raise InputError("empty batch")
        slots = [e.slot for e in batch]
        if len(set(slots)) != len(slots):
            raise InputError(f"batch: slot listed twice ({slots})")
        for e in batch:
            pool.check_live(e.slot)
            bad = next((t for t in e.tokens if not 0 <= t < self.n_vocab), None)
            if not e.tokens or bad is not None:
                raise InputError(f"tokens: need >= 1 id in 0..{self.n_vocab - 1}, got "
                                 f"{'none' if bad is None else bad} (the vocabulary has "
                                 f"{self.n_vocab} tokens)")
            if pool.n_past[e.slot] + len(e.tokens) > pool.n_ctx:
                raise InputError(f"slot {e.slot}: {pool.n_past[e.slot]} + {len(e.tokens)} tokens exceed the "
                                 f"context of {pool.n_ctx}")
