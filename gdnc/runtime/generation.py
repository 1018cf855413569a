"""Serve many sequences at once: a scheduler over a ``BatchModel`` and its ``StatePool``.

Every ``step()`` runs ONE batch that mixes prefill (a newly admitted sequence's prompt, in
chunks of ``prefill_chunk``, by default the model's) and decode (one token of every other
running sequence).
A sequence gets a pool slot when it is admitted and gives it back when it finishes (token
budget, EOS, context full), fails or is cancelled; a live sequence never loses its slot.
Requests beyond the free slots wait in arrival order; with ``max_waiting`` set, a request
that would make the queue longer is refused (``PoolFullError``). A sequence whose logits turn
non-finite (NaN/Inf from its input or state) fails alone: status "failed", the reason names
the step, and the others' results are bit-identical to a batch without the fault. Each
sequence samples with its own ``Sampler`` (``gdnc.runtime.sampling``: greedy at temperature 0,
else a generator of the request's own seed), so it samples the same tokens alone or in company.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from gdnc.errors import InputError
from gdnc.runtime.batch_model import BatchModel
from gdnc.runtime.sampling import Sampler, Sampling
from gdnc.runtime.state_pool import Entry, PoolFullError

FINISHED = ("done", "cancelled", "failed")
M = TypeVar("M", bound=BatchModel)


@dataclass(frozen=True)
class Request:
    """What to generate: ``max_new_tokens`` after ``prompt``; ``arrival``: the first scheduler
    step at which it may start (0: at once)."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop_at_eos: bool = True
    arrival: int = 0


@dataclass
class Sequence:
    """A request's progress: ``status`` queued / running / done / cancelled / failed."""

    id: int
    request: Request
    generated: list[int] = field(default_factory=list)
    status: str = "queued"
    finish_reason: str | None = None
    slot: int | None = None
    fed: int = 0  # prompt tokens already run
    sampler: Sampler = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.request.sampling)

    def pending(self, chunk: int) -> tuple[int, ...]:
        """The tokens this sequence feeds in the next batch."""
        prompt = self.request.prompt
        if self.fed < len(prompt):
            return prompt[self.fed:self.fed + chunk]
        return (self.generated[-1],)


@dataclass
class Timing:
    """Wall time and token counts of everything the scheduler ran."""

    steps: int = 0
    seconds: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated: int = 0

    def to_json(self) -> dict:
        return {**vars(self), "tokens_per_s": self.generated / self.seconds if self.seconds else 0.0,
                "batch_tokens_per_s": (self.prefill_tokens + self.decode_tokens) / self.seconds
                if self.seconds else 0.0}


class Scheduler(Generic[M]):
    """``submit`` requests, then ``step()`` until ``done`` (or ``run()``) on ``model``."""

    def __init__(self, model: M, parallel: int, n_ctx: int | None = None,
                 prefill_chunk: int | None = None, eos_id: int | None = None,
                 max_waiting: int | None = None) -> None:
        if parallel < 1:
            raise InputError(f"--parallel must be >= 1, got {parallel}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise InputError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        if max_waiting is not None and max_waiting < 0:
            raise InputError(f"max_waiting must be >= 0, got {max_waiting}")
        self.model, self.eos_id = model, eos_id
        self.chunk = prefill_chunk or model.limits.chunk
        self.max_waiting = max_waiting
        self.pool = model.new_pool(parallel, n_ctx)
        self.sequences: list[Sequence] = []
        self.timing = Timing()

    def submit(self, request: Request) -> int:
        if not request.prompt:
            raise InputError("a request needs a prompt of >= 1 token")
        if request.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {request.max_new_tokens}")
        if len(request.prompt) + request.max_new_tokens - 1 > self.pool.n_ctx:
            raise InputError(f"prompt of {len(request.prompt)} + {request.max_new_tokens} new tokens "
                             f"exceed the context of {self.pool.n_ctx}")
        backlog = sum(s.status == "queued" for s in self.sequences) - self.pool.free_slots()
        if self.max_waiting is not None and backlog >= self.max_waiting:
            raise PoolFullError(f"all {self.pool.slots} slots are busy and {backlog} request(s) are "
                                f"waiting (the limit); submit again when a sequence finishes")
        seq = Sequence(len(self.sequences), request)
        self.sequences.append(seq)
        return seq.id

    def cancel(self, seq_id: int) -> None:
        seq = self.sequences[seq_id]
        if seq.status in ("queued", "running"):
            self._finish(seq, "cancelled", status="cancelled")

    @property
    def done(self) -> bool:
        return all(s.status in FINISHED for s in self.sequences)

    def _finish(self, seq: Sequence, reason: str, status: str = "done") -> None:
        if seq.slot is not None:
            self.pool.release(seq.slot)
            seq.slot = None
        seq.status, seq.finish_reason = status, reason

    def _admit(self) -> None:
        for seq in self.sequences:
            if seq.status != "queued" or seq.request.arrival > self.timing.steps:
                continue
            if seq.request.max_new_tokens == 0:
                self._finish(seq, "length")
                continue
            if not self.pool.free_slots():
                return  # wait in arrival order
            seq.slot, seq.status = self.pool.allocate(), "running"

    def step(self) -> list[tuple[int, int]]:
        """Run one batch; the (sequence id, new token) pairs it produced."""
        self._admit()
        running = [s for s in self.sequences if s.status == "running"]
        if not running:
            self.timing.steps += 1
            return []
        feeds = [(s, s.pending(self.chunk)) for s in running]
        start = time.perf_counter()
        logits = self.model.forward(self.pool, [Entry(s.slot, toks) for s, toks in feeds])  # type: ignore[arg-type]
        finite = torch.isfinite(torch.stack(logits)).all(dim=-1).tolist()  # one sync
        events = []
        for (seq, toks), row, ok in zip(feeds, logits, finite):
            if not ok:
                kind = "NaN" if bool(torch.isnan(row).any()) else "Inf"
                self._finish(seq, f"non-finite logits ({kind}) at scheduler step {self.timing.steps}, "
                                  f"after {seq.fed} prompt + {len(seq.generated)} generated tokens",
                             status="failed")
                continue
            prefill = seq.fed < len(seq.request.prompt)
            if prefill:
                seq.fed += len(toks)
                self.timing.prefill_tokens += len(toks)
                if seq.fed < len(seq.request.prompt):
                    continue
            else:
                self.timing.decode_tokens += 1
            token = seq.sampler.pick(row, seq.request.prompt + tuple(seq.generated))
            seq.generated.append(token)
            events.append((seq.id, token))
            if len(seq.generated) >= seq.request.max_new_tokens:
                self._finish(seq, "length")
            elif seq.request.stop_at_eos and token == self.eos_id:
                self._finish(seq, "eos")
        self.timing.seconds += time.perf_counter() - start
        self.timing.steps += 1
        self.timing.generated += len(events)
        return events

    def run(self, on_token: Callable[[int, int], None] | None = None,
            max_steps: int = 1_000_000) -> list[Sequence]:
        """Step until every sequence is done; ``on_token(seq_id, token)`` sees each token."""
        for _ in range(max_steps):
            if self.done:
                break
            for seq_id, token in self.step():
                if on_token is not None:
                    on_token(seq_id, token)
        return self.sequences
