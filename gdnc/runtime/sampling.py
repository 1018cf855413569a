"""How a sequence picks its next token from its logits: llama.cpp's sampler chain.

In order: the repeat penalty (over the last ``repeat_last_n`` tokens of prompt and output, each
distinct token's logit divided by the penalty when positive, multiplied when not), top-k, top-p
(the smallest set of most likely tokens whose probability reaches p, at temperature 1), then
greedy at temperature 0, else a draw from softmax(logits / T) with a generator of the seed.
The softmax runs in float64 after subtracting the largest logit, so any positive temperature
works: at 1e-40 every token below the maximum gets probability exactly 0, i.e. greedy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gdnc.errors import InputError

SEED_MODULUS = 1 << 64  # torch generators take 64-bit seeds; larger ones are reduced modulo this


@dataclass(frozen=True)
class Sampling:
    """Sampler settings (InputError when out of range). ``top_k`` 0 and ``top_p`` 1 are off,
    ``repeat_penalty`` 1 is off, ``repeat_last_n`` -1 is the whole history; ``seed`` >= 0 of
    any size (reduced modulo 2**64)."""

    temperature: float = 0.0
    seed: int = 0
    top_k: int = 0
    top_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature):
            raise InputError(f"temperature must be a finite number, got {self.temperature}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed} (there is no random seed: runs repeat)")
        if self.top_k < 0:
            raise InputError(f"top-k must be >= 0 (0: off), got {self.top_k}")
        if not 0 <= self.top_p <= 1:
            raise InputError(f"top-p must be in [0, 1] (1: off), got {self.top_p}")
        if not (math.isfinite(self.repeat_penalty) and self.repeat_penalty > 0):
            raise InputError(
                f"repeat penalty must be a finite number > 0 (1: off), got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise InputError(f"repeat-last-n must be >= 0, or -1 for all, got {self.repeat_last_n}")


class Sampler:
    """One sequence's sampler: ``pick(logits, history)`` the next token id."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.rng = None
        if sampling.temperature > 0:
            self.rng = torch.Generator().manual_seed(sampling.seed % SEED_MODULUS)

    def pick(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """The next token after ``history`` (prompt and output so far) given its ``logits`` [V]."""
        s = self.sampling
        x = logits.detach()
        if s.repeat_penalty != 1 and s.repeat_last_n != 0:
            x = penalize(x, history if s.repeat_last_n < 0 else history[-s.repeat_last_n:], s.repeat_penalty)
        if self.rng is None:
            return int(torch.argmax(x).item())
        probs = distribution(x, s.top_k, s.top_p, s.temperature)
        return int(torch.multinomial(probs, 1, generator=self.rng).item())


def penalize(logits: torch.Tensor, recent: Sequence[int], penalty: float) -> torch.Tensor:
    """``logits`` (in float64) with each distinct token of ``recent`` penalised once, as llama.cpp
    does."""
    out = logits.to(torch.float64, copy=True)
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long, device=out.device)
    if ids.numel():
        row = out[ids]
        out[ids] = torch.where(row > 0, row / penalty, row * penalty)
    return out


def distribution(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """Float64 CPU probabilities over the vocabulary that a draw at ``temperature`` > 0 uses: 0
    for the tokens top-k (0: off) and top-p (1: off) leave out, softmax(logits / T) over the rest."""
    x = logits.to("cpu", torch.float64)
    n = x.numel()
    if not 0 < top_k < n and top_p >= 1:
        return torch.softmax((x - x.max()) / temperature, dim=-1)
    kept, ids = torch.sort(x, descending=True, stable=True)
    if 0 < top_k < n:
        kept, ids = kept[:top_k], ids[:top_k]
    if top_p < 1:
        cum = torch.cumsum(torch.softmax(kept - kept[0], dim=-1), dim=-1)
        end = int(torch.searchsorted(cum, torch.tensor([top_p], dtype=cum.dtype)).item()) + 1
        kept, ids = kept[:end], ids[:end]
    probs = torch.zeros_like(x)
    probs[ids] = torch.softmax((kept - kept[0]) / temperature, dim=-1)
    return probs
