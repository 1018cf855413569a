"""The sampler against hand-computed distributions: llama.cpp's chain (repeat penalty, top-k,
top-p, temperature), tiny temperatures (greedy), seeds of any size, and its one-line refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdnc.errors import InputError
from gdnc.runtime.sampling import SEED_MODULUS, Sampler, Sampling, distribution, penalize


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def _draws(sampling: Sampling, logits: torch.Tensor, n: int) -> list[int]:
    sampler = Sampler(sampling)
    return [sampler.pick(logits, ()) for _ in range(n)]


def test_top_k_then_top_p_then_temperature_by_hand() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])
    # top-k 3 keeps ids 4, 0, 1 (3.0, 2.0, 1.0); their softmax 0.665, 0.245, 0.090: top-p 0.8 is
    # reached at the second, so ids 4 and 0 remain; temperature 0.5: softmax(6, 4)
    e2 = math.exp(2.0)
    want = [1 / (e2 + 1), 0.0, 0.0, 0.0, e2 / (e2 + 1)]
    got = distribution(logits, top_k=3, top_p=0.8, temperature=0.5)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    # top-p only, at exactly a cumulative boundary's far side: 0.7 needs the two likeliest
    p = _softmax([2.0, 1.0, 0.5, -1.0, 3.0])
    assert p[4] < 0.7 < p[4] + p[0]
    got = distribution(logits, top_k=0, top_p=0.7, temperature=1.0)
    assert got.tolist() == pytest.approx([p[0] / (p[0] + p[4]), 0, 0, 0, p[4] / (p[0] + p[4])], abs=1e-12)
    # top-p 0 keeps the likeliest token; top-k 1 too; both off: the plain softmax
    assert distribution(logits, 0, 0.0, 1.0).tolist() == [0, 0, 0, 0, 1]
    assert distribution(logits, 1, 1.0, 7.0).tolist() == [0, 0, 0, 0, 1]
    assert distribution(logits, 0, 1.0, 2.0).tolist() == pytest.approx(
        _softmax([x / 2 for x in logits.tolist()]), abs=1e-12)


def test_repeat_penalty_as_llama_cpp() -> None:
    """Each distinct token of the window once: positive logits divided, the others multiplied."""
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
    got = penalize(logits, [0, 1, 1, 4], 2.0)
    assert got.tolist() == [1.0, -2.0, 0.5, 3.0, 0.0]
    # greedy after the penalty, over the last repeat_last_n tokens only
    close = torch.tensor([2.0, 1.9, 0.0])
    assert Sampler(Sampling(repeat_penalty=1.1)).pick(close, [0]) == 1
    assert Sampler(Sampling(repeat_penalty=1.1, repeat_last_n=1)).pick(close, [0, 2]) == 0
    long_ago = [0] + [2] * 64  # token 0 just outside the default window of 64
    assert Sampler(Sampling(repeat_penalty=1.1)).pick(close, long_ago) == 0
    assert Sampler(Sampling(repeat_penalty=1.1, repeat_last_n=-1)).pick(close, long_ago) == 1
    assert Sampler(Sampling(repeat_penalty=1.1, repeat_last_n=0)).pick(close, [0]) == 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vocab=st.integers(2, 300),
       temperature=st.sampled_from([1e-40, 1e-300, 5e-324, 1e-20]))
def test_a_tiny_temperature_is_greedy(seed: int, vocab: int, temperature: float) -> None:
    logits = torch.from_numpy(np.random.default_rng(seed).normal(0, 3, vocab).astype(np.float32))
    greedy = int(torch.argmax(logits))
    draws = _draws(Sampling(temperature=temperature, seed=seed), logits, 5)
    assert draws == [greedy] * 5, f"seed {seed}"


def test_seeds_of_any_size_are_reduced_modulo_2_64() -> None:
    logits = torch.from_numpy(np.random.default_rng().normal(0, 1, 50).astype(np.float32))
    big = 2**70 + 12345
    a = _draws(Sampling(temperature=1.0, seed=big), logits, 20)
    assert a == _draws(Sampling(temperature=1.0, seed=big % SEED_MODULUS), logits, 20)
    assert a == _draws(Sampling(temperature=1.0, seed=big + SEED_MODULUS), logits, 20)


def test_draws_follow_the_distribution() -> None:
    """2,000 draws at top-k 3: only the three likeliest ids, at frequencies within 4 sigma."""
    logits = torch.tensor([0.3, 2.0, -0.5, 1.5, 1.0, -2.0])
    probs = distribution(logits, 3, 1.0, 1.0)
    counts = np.bincount(_draws(Sampling(temperature=1.0, top_k=3, seed=7), logits, 2000), minlength=6)
    assert set(np.flatnonzero(counts)) <= {1, 3, 4}
    for c, p in zip(counts, probs.tolist()):
        assert abs(c - 2000 * p) <= 4 * math.sqrt(2000 * p * (1 - p)) + 1e-9


@pytest.mark.parametrize(("fields", "needle"), [
    ({"temperature": math.nan}, "temperature must be a finite number, got nan"),
    ({"temperature": math.inf}, "temperature must be a finite number, got inf"),
    ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
    ({"seed": -1}, "seed must be >= 0, got -1"),
    ({"top_k": -1}, "top-k must be >= 0"),
    ({"top_p": 1.5}, "top-p must be in [0, 1]"),
    ({"top_p": math.nan}, "top-p must be in [0, 1]"),
    ({"repeat_penalty": 0.0}, "repeat penalty must be a finite number > 0"),
    ({"repeat_penalty": math.nan}, "repeat penalty must be a finite number > 0"),
    ({"repeat_last_n": -2}, "repeat-last-n must be >= 0, or -1"),
])
def test_bad_settings_are_one_line_errors(fields: dict, needle: str) -> None:
    with pytest.raises(InputError) as info:
        Sampling(**fields)
    assert needle in str(info.value) and "\n" not in str(info.value)
