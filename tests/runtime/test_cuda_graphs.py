"""Decode steps replayed from CUDA graphs (``runtime.cuda_graphs``) and what they rest on: decode
batches padded to buckets with free slots, attention keys padded to ``KEY_BUCKET``, host copies
of index values (no value read back from the GPU), and the GatedDeltaNet call's captured plan
whose launch reads its index tensors on the device.

The padding and the captured plan are checked on the CPU; the capture itself needs a GPU (the
``gpu``-marked tests)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from gdnc.errors import OpArgumentError
from gdnc.lowering.gated_delta_net import api
from gdnc.lowering.gated_delta_net.api import _plan
from gdnc.lowering.gated_delta_net.checks import index_values
from gdnc.lowering.host_values import host_copy, known
from gdnc.models.qwen_hybrid.batch import batch_feeds
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.batch_runner import KEY_BUCKET, decode_bucket, padded_decode
from gdnc.runtime.state_pool import Entry, StatePool

ROOT = Path(__file__).resolve().parents[2]
MODELS = [ROOT / "tests" / "fixtures" / "gguf" / f"{arch}-fixture-f32.gguf"
          for arch in ("qwen35", "qwen3next", "qwen35moe")] + \
         [ROOT / "examples" / f"tiny-qwen35-{t}.gguf" for t in ("f16", "q8_0")]


@given(st.integers(1, 300), st.integers(1, 300))
def test_a_decode_bucket_is_a_power_of_two_or_the_pool_and_holds_the_batch(n: int, slots: int) -> None:
    b = decode_bucket(n, slots)
    assert b == slots or (b & (b - 1) == 0 and b < 2 * n)
    assert b >= min(n, slots)


@settings(max_examples=50)
@given(st.integers(1, 12).flatmap(
    lambda p: st.tuples(st.just(p), st.lists(st.booleans(), min_size=p, max_size=p))), st.data())
def test_pads_take_only_free_slots_each_once(pool_live: tuple[int, list[bool]], data: st.DataObject) -> None:
    slots, live = pool_live
    if not any(live):
        live[0] = True
    pool = StatePool({"s": (slots, 2)}, 8, "cpu")
    pool.live = list(live)
    pool.n_past = [3] * slots
    mine = [s for s, x in enumerate(live) if x]
    batch = [Entry(s, (1,)) for s in data.draw(st.lists(st.sampled_from(mine), min_size=1, unique=True))]
    full = padded_decode(pool, batch)
    assert full[:len(batch)] == batch
    pads = [e.slot for e in full[len(batch):]]
    assert len(set(e.slot for e in full)) == len(full) and not any(live[s] for s in pads)
    assert all(pool.n_past[s] == 0 and e.tokens == (0,) for s, e in zip(pads, full[len(batch):]))
    free = live.count(False)
    assert len(full) == len(batch) + min(free, decode_bucket(len(batch), slots) - len(batch))


def test_keys_are_padded_to_the_bucket_and_padding_reads_position_zero() -> None:
    model = HybridModel(str(MODELS[0]))
    pool = model.new_pool(2, 600)
    a, b = pool.allocate(), pool.allocate()
    pool.n_past[a], pool.n_past[b] = 5, 300
    batch = [Entry(a, (1,)), Entry(b, (2,))]
    plain = batch_feeds(model.cfg, pool, batch, False)
    padded = batch_feeds(model.cfg, pool, batch, False, KEY_BUCKET)
    assert plain["kv_read"].shape == (2, 301) and padded["kv_read"].shape == (2, 2 * KEY_BUCKET)
    assert np.array_equal(padded["kv_read"][:, :301], plain["kv_read"])
    first = np.repeat(plain["kv_read"][:, :1], 2 * KEY_BUCKET - 301, 1)
    assert np.array_equal(padded["kv_read"][:, 301:], first)
    pool.n_past[b] = 598  # the bucket would pass the context: the keys stop at it
    assert batch_feeds(model.cfg, pool, batch, False, KEY_BUCKET)["kv_read"].shape == (2, 600)


def _decode(model: HybridModel, prompts: list[tuple[int, ...]], steps: int, bystander: tuple[int, ...]
            ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Logits of a prefill of ``prompts`` and ``steps`` greedy decodes of them all, and the pool
    rows of a ``bystander`` sequence that was prefilled first and is live throughout, in no batch."""
    pool = model.new_pool(len(prompts) + 4, 48)
    other = pool.allocate()
    model.forward(pool, [Entry(other, bystander)])
    before = {n: t[other].clone() for n, t in pool.tensors.items()}
    slots = [pool.allocate() for _ in prompts]
    batch = [Entry(s, p) for s, p in zip(slots, prompts)]
    seen = []
    for _ in range(steps + 1):
        logits = model.forward(pool, batch)
        seen.append(torch.stack(logits).cpu())
        batch = [Entry(s, (int(row.argmax()),)) for s, row in zip(slots, logits)]
    assert all(torch.equal(before[n], t[other]) for n, t in pool.tensors.items())
    return seen, before


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_padded_decode_runs_give_the_plain_runs_logits_and_spare_other_slots(path: Path) -> None:
    """Three sequences padded to four with a free slot, keys padded to 256: the same logits (to
    float rounding: wider matrix products) and greedy tokens; a live sequence outside the batch
    keeps its state bit for bit."""
    rng = np.random.default_rng()
    plain = HybridModel(str(path))
    padded = HybridModel(str(path), file=plain.file)
    padded._runner = dataclasses.replace(padded._runner, pad_decode=True)
    prompts = [tuple(int(t) for t in rng.integers(0, plain.n_vocab, n)) for n in (5, 1, 9)]
    bystander = tuple(int(t) for t in rng.integers(0, plain.n_vocab, 4))
    got, _ = _decode(padded, prompts, 4, bystander)
    want, _ = _decode(plain, prompts, 4, bystander)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert torch.equal(g.argmax(-1), w.argmax(-1))


def test_host_copies_stand_in_for_reading_index_tensors_back() -> None:
    cu, slots = torch.tensor([0, 1, 2]), torch.tensor([4, 7])
    assert host_copy(cu) is None
    with known([(cu, np.array([0, 1, 2])), (slots, np.array([4, 7]))]):
        assert host_copy(cu.view(3)).tolist() == [0, 1, 2]  # a view of the same elements
        assert host_copy(slots[:1]) is None  # other elements: not known
        assert index_values(cu, slots, slots) == [[0, 1, 2], [4, 7], [4, 7]]
    assert host_copy(cu) is None


def _gdn_call(n: int, lengths: list[int], ins: list[int], outs: list[int]) -> tuple:
    T, H, K, V = sum(lengths), 2, 8, 8
    q, k, v = (torch.randn(T, H, d) for d in (K, K, V))
    g, beta = -torch.rand(T, H), torch.rand(T, H)
    pool = torch.randn(n, H, K, V)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64)
    i, o = torch.tensor(ins), torch.tensor(outs)
    operands = (q, k, v, g, beta, pool, None)
    values = index_values(cu, i, o)
    return operands, cu, i, o, values


def test_a_captured_plan_reads_its_launch_indices_from_the_index_tensors(monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    """The captured plan's one launch equals the eager plan's for a decode call, and is computed
    from the index tensors by device ops: no index tensor is made from host values (a
    host-to-device copy, which a capture refuses and a replay would not repeat)."""
    options = ("auto", "auto", "interleave", "kv", True)
    operands, cu, i, o, values = _gdn_call(6, [1, 1, 1], [4, 0, 2], [4, 0, 2])
    eager = _plan(operands, cu, i, o, values, options)

    def no_host_tensors(*args: object) -> None:
        raise AssertionError("an index tensor made from host values")

    monkeypatch.setattr(api, "_index", no_host_tensors)
    monkeypatch.setattr(api, "_launch_indices", no_host_tensors)
    captured = _plan(operands, cu, i, o, values, options, captured=True)
    assert len(eager.launches) == len(captured.launches) == 1
    assert torch.equal(eager.launches[0].indices, captured.launches[0].indices)
    assert captured.launches[0].algorithm == eager.launches[0].algorithm and captured.snapshot is None


@pytest.mark.parametrize("lengths, ins, outs", [
    ([1, 1], [0, 1], [1, 0]),  # an out slot another sequence reads: needs a snapshot
    ([1, 200], [0, 1], [0, 1]),  # recurrent and chunked
], ids=["overlap", "two-algorithms"])
def test_calls_a_captured_plan_cannot_serve_are_refused(lengths: list[int], ins: list[int],
                                                        outs: list[int]) -> None:
    operands, cu, i, o, values = _gdn_call(4, lengths, ins, outs)
    with pytest.raises(OpArgumentError, match="cannot be captured in a CUDA graph"):
        _plan(operands, cu, i, o, values, ("auto", "auto", "interleave", "kv", True), captured=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_cuda_graph_steps_match_eager_steps(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU: decode steps replayed from CUDA graphs give the eager steps' logits (to float
    rounding: padded shapes) and greedy tokens, spare a live sequence outside the batch, and
    no capture is refused."""
    rng = np.random.default_rng()
    prompts = [tuple(int(t) for t in rng.integers(0, 50, n)) for n in (5, 1, 9)]
    bystander = tuple(int(t) for t in rng.integers(0, 50, 4))
    graphed = HybridModel(str(path), device="cuda")
    got, _ = _decode(graphed, prompts, 6, bystander)
    graphs = graphed.fused_executor().graphs
    assert graphs is not None and graphs.refused is None
    assert graphs.captures >= 1 and graphs.replays >= 4
    monkeypatch.setenv("GDNC_CUDA_GRAPHS", "off")
    eager = HybridModel(str(path), device="cuda", file=graphed.file)
    want, _ = _decode(eager, prompts, 6, bystander)
    assert eager.fused_executor().graphs is None
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        assert torch.equal(g.argmax(-1), w.argmax(-1))


def _changing_batches(model: HybridModel, seed: int) -> list[list[int]]:
    """Every sequence's tokens over batches of 3, 2, 5, 1 and 4 decoding sequences (buckets 4,
    2, 8, 1, 4), sequences leaving and joining between them."""
    pool = model.new_pool(8, 64)
    rng = np.random.default_rng(seed)
    live: dict[int, list[int]] = {}
    done: list[list[int]] = []
    for size in (3, 2, 5, 1, 4):
        while len(live) > size:
            slot = next(iter(live))
            pool.release(slot)
            done.append(live.pop(slot))
        while len(live) < size:
            slot = pool.allocate()
            prompt = [int(t) for t in rng.integers(0, model.n_vocab, 3)]
            live[slot] = prompt + [int(model.forward(pool, [Entry(slot, tuple(prompt))])[0].argmax())]
        for _ in range(3):
            rows = model.forward(pool, [Entry(s, (toks[-1],)) for s, toks in live.items()])
            for s, row in zip(list(live), rows):
                live[s].append(int(row.argmax()))
    return done + list(live.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_follow_changing_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences joining and leaving between decode batches of changing sizes: the tokens of
    the graphed run equal the eager run's."""
    seed = int(np.random.default_rng().integers(1 << 30))
    graphed = HybridModel(str(MODELS[3]), device="cuda")
    got = _changing_batches(graphed, seed)
    assert graphed.fused_executor().graphs.captures >= 3
    monkeypatch.setenv("GDNC_CUDA_GRAPHS", "off")
    assert _changing_batches(HybridModel(str(MODELS[3]), device="cuda", file=graphed.file), seed) == got


class _NoHostTraffic(TorchFunctionMode):
    """Fails on every torch call that, on a GPU, reads a value back to the host or makes a
    tensor from host values (a stall; an error inside a CUDA graph capture). Reading one of
    the graph's ``constants`` is allowed: on a GPU the executor hands the ops that read them
    host copies."""

    FORBIDDEN = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu",
                 "tensor", "as_tensor"}

    def __init__(self, constants: object) -> None:
        super().__init__()
        self.constants = {id(c) for c in constants}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.FORBIDDEN and not (args and id(args[0]) in self.constants):
            raise AssertionError(f"torch.{name} in a step meant for a CUDA graph")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_a_padded_decode_step_reads_nothing_back_and_uploads_nothing(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a capture needs, checked on the CPU: one padded decode step of the compiled fused
    graph, given the feeds' host copies and the GatedDeltaNet call's captured plan, calls no
    torch function that reads a value back or makes a tensor from host values; its logits and
    pools are the plain step's."""
    model = HybridModel(str(path))
    pool = model.new_pool(4, 64)
    slots = [pool.allocate() for _ in range(3)]
    rng = np.random.default_rng()
    model.forward(pool, [Entry(s, tuple(int(t) for t in rng.integers(0, model.n_vocab, 3))) for s in slots])
    batch = padded_decode(pool, [Entry(s, (int(rng.integers(model.n_vocab)),)) for s in slots])
    ex = model.fused_executor()
    feeds = batch_feeds(model.cfg, pool, batch, False, KEY_BUCKET)
    tensors = {n: torch.from_numpy(feeds[n]) for n in ex.input_names if n in feeds}
    plain = ex.run({**tensors, **{n: t.clone() for n, t in pool.tensors.items()}})
    monkeypatch.setattr(api, "capturing", lambda t: True)
    with torch.inference_mode(), known((tensors[n], feeds[n]) for n in tensors), \
            _NoHostTraffic(ex.runner.constants.values()):
        outs = ex.runner.run({**tensors, **pool.tensors})
    got = dict(zip(ex.model.graph.outputs, outs))
    assert all(torch.equal(got[n], plain[n]) for n in plain)
