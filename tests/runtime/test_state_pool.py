"""The generic state pool: tensors of any family's shapes, one slot per sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdnc.errors import InputError
from gdnc.runtime.state_pool import PoolFullError, StatePool


def _hybrid_shapes(rng: np.random.Generator, slots: int, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """Delta-net and conv states plus one attention layer's KV cache (a qwen hybrid's layout)."""
    hv, k, c = (int(x) for x in rng.integers(1, 5, 3))
    return {"ssm_state.0": (slots, hv, k, k), "conv_state.0": (slots, c, 3 * k),
            "k_cache.1": (slots, n_ctx, 2, k), "v_cache.1": (slots, n_ctx, 2, k)}


def _attention_shapes(rng: np.random.Generator, slots: int, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """KV caches only (a plain transformer's layout)."""
    kv, hd = (int(x) for x in rng.integers(1, 5, 2))
    return {f"{name}.{i}": (slots, n_ctx, kv, hd) for i in range(3) for name in ("k_cache", "v_cache")}


@pytest.fixture(params=[_hybrid_shapes, _attention_shapes], ids=["hybrid", "attention"])
def layout(request):
    return request.param


@pytest.mark.parametrize("seed", [0, 1])
def test_allocate_zeroes_and_release_reuses(layout, seed):
    rng = np.random.default_rng(seed)
    slots, n_ctx = int(rng.integers(2, 6)), int(rng.integers(1, 9))
    shapes = layout(rng, slots, n_ctx)
    pool = StatePool(shapes, n_ctx, "cpu")
    assert (pool.slots, pool.n_ctx) == (slots, n_ctx)
    assert {n: tuple(t.shape) for n, t in pool.tensors.items()} == shapes
    assert all(t.dtype == torch.float32 and not t.any() for t in pool.tensors.values())
    assert [pool.allocate() for _ in range(slots)] == list(range(slots))
    assert pool.free_slots() == 0
    for t in pool.tensors.values():
        t.copy_(torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32)))
    before = {n: t.clone() for n, t in pool.tensors.items()}
    victim = int(rng.integers(0, slots))
    pool.n_past[victim] = 5
    pool.release(victim)
    assert pool.free_slots() == 1 and not pool.live[victim]
    assert pool.allocate() == victim
    assert pool.n_past[victim] == 0
    for name, t in pool.tensors.items():
        assert not t[victim].any()
        others = [s for s in range(slots) if s != victim]
        assert torch.equal(t[others], before[name][others])


def test_full_pool_and_dead_slots(layout):
    rng = np.random.default_rng(2)
    pool = StatePool(layout(rng, 2, 4), 4, "cpu")
    pool.allocate(), pool.allocate()
    with pytest.raises(PoolFullError, match="state pool full: all 2 slots hold live sequences"):
        pool.allocate()
    pool.release(1)
    with pytest.raises(InputError, match=r"slot 1 is not a live slot of the state pool \(0..1\)"):
        pool.release(1)
    with pytest.raises(InputError, match=r"slot 7 is not a live slot of the state pool \(0..1\)"):
        pool.check_live(7)
    pool.check_live(0)


@pytest.mark.parametrize("slots,n_ctx", [(0, 4), (2, 0)])
def test_empty_pool_is_refused(layout, slots, n_ctx):
    shapes = layout(np.random.default_rng(3), slots, max(n_ctx, 1))
    with pytest.raises(InputError, match=rf"need >= 1 slot and context >= 1 \(got {slots}, {n_ctx}\)"):
        StatePool(shapes, n_ctx, "cpu")


def test_slot_counts_must_agree():
    with pytest.raises(InputError, match=r"same slot count \(dim 0\), got \[2, 3\]"):
        StatePool({"a": (2, 4), "b": (3, 4)}, 4, "cpu")
    with pytest.raises(InputError, match=r"got \[\]"):
        StatePool({}, 4, "cpu")
