"""Split one batch into runs of bounded size: long prompts are fed in chunks.

A run feeds each of its sequences at most ``chunk`` new tokens, and its attention scores
(padded per sequence: sequences x heads x longest piece x most keys) hold at most
``score_budget`` elements, so the memory of a run grows with the context, never with its
square. Every sequence feeds its tokens in order, one piece per round; the pieces of a round
go into as few runs as the budget allows, in batch order. A sequence reads and writes only its
own slot, so several runs give the results of one (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gdnc.errors import InputError

DEFAULT_CHUNK = 512
SCORE_BUDGET = 1 << 26  # elements of one [N, heads, Lq, S] score tensor: 256 MiB in float32


@dataclass(frozen=True)
class Limits:
    """Most new tokens per sequence and most attention-score elements in one run."""

    chunk: int = DEFAULT_CHUNK
    score_budget: int = SCORE_BUDGET

    @classmethod
    def for_prefill_chunk(cls, prefill_chunk: int | None) -> Limits:
        """The limits of runs feeding prompts ``prefill_chunk`` tokens at a time (None: the
        default); InputError when it is < 1."""
        if prefill_chunk is not None and prefill_chunk < 1:
            raise InputError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        return cls(chunk=prefill_chunk or DEFAULT_CHUNK)


@dataclass(frozen=True)
class Piece:
    """Tokens ``start:end`` of the batch's entry ``index``."""

    index: int
    start: int
    end: int


def piece_length(left: int, seen: int, heads: int, limits: Limits) -> int:
    """Tokens a sequence that has seen ``seen`` and has ``left`` to feed feeds next: at most
    ``chunk``, and few enough that its own scores (heads x piece x (seen + piece)) fit the
    budget; at least 1."""
    room = limits.score_budget // max(heads, 1)  # piece * (seen + piece) <= room
    fits = (math.isqrt(seen * seen + 4 * room) - seen) // 2
    return max(1, min(left, limits.chunk, fits))


def score_elements(run: Sequence[Piece], past: Sequence[int], heads: int) -> int:
    """Elements of the padded score tensor of ``run``."""
    longest = max(p.end - p.start for p in run)
    keys = max(past[p.index] + p.end for p in run)
    return len(run) * heads * longest * keys


def plan_runs(lengths: Sequence[int], past: Sequence[int], heads: int, limits: Limits
              ) -> list[list[Piece]]:
    """The runs feeding entry i's ``lengths[i]`` tokens after its ``past[i]`` ones, in order."""
    fed = [0] * len(lengths)
    runs: list[list[Piece]] = []
    while True:
        pieces = []
        for i, (n, p) in enumerate(zip(lengths, past)):
            if fed[i] < n:
                size = piece_length(n - fed[i], p + fed[i], heads, limits)
                pieces.append(Piece(i, fed[i], fed[i] + size))
                fed[i] += size
        if not pieces:
            return runs
        run: list[Piece] = []
        for piece in pieces:
            if run and score_elements([*run, piece], past, heads) > limits.score_budget:
                runs.append(run)
                run = []
            run.append(piece)
        runs.append(run)


def max_score_elements(slots: int, n_ctx: int, heads: int, limits: Limits) -> int:
    """The largest score tensor a run over ``slots`` sequences of context ``n_ctx`` can hold."""
    return max(heads * n_ctx, min(limits.score_budget, slots * heads * min(limits.chunk, n_ctx) * n_ctx))
