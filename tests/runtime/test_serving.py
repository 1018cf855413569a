"""Serving many sequences at once on the example models (corpus/tiny_gguf.py).

- fused vs unfused: the same greedy tokens, logits within tolerance, on every architecture
  and both weight types;
- isolation: K = 1..8 sequences decoded together (different prompt lengths, arriving at
  different steps, some finishing early) each produce exactly the tokens they produce alone;
- the fused graph is built once for every batch composition, unfused graphs per composition;
- slots are released and reused; bad requests are one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corpus.tiny_gguf import write_models
from gdnc.errors import InputError
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.generation import Request, Scheduler
from gdnc.runtime.sampling import Sampling
from gdnc.runtime.state_pool import Entry, PoolFullError

ARCHS = ["qwen35", "qwen35moe", "qwen3next"]
MAX_ABS = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], Path]:
    paths = write_models(tmp_path_factory.mktemp("gguf"))
    return {tuple(p.name.removesuffix(".gguf").split("-tiny-")): p for p in paths}  # type: ignore[misc]


def _prompts(rng: np.random.Generator, n: int, vocab: int = 500) -> list[tuple[int, ...]]:
    return [tuple(int(t) for t in rng.integers(0, vocab, int(rng.integers(1, 24)))) for _ in range(n)]


def _generate(model: HybridModel, requests: list[Request], parallel: int,
              prefill_chunk: int | None = None) -> list[list[int]]:
    sched = Scheduler(model, parallel, n_ctx=64, prefill_chunk=prefill_chunk)
    for r in requests:
        sched.submit(r)
    return [s.generated for s in sched.run()]


@pytest.mark.parametrize("variant", ["f32", "q8_0"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_and_unfused_agree(models, arch, variant):
    path = models[(arch, variant)]
    rng = np.random.default_rng(7)
    prompt = _prompts(rng, 1)[0] + (1, 2, 3)
    out = {}
    for fused in (False, True):
        model = HybridModel(str(path), fused=fused)
        logits = model.logits(prompt).numpy()
        tokens = _generate(model, [Request(prompt, 8, stop_at_eos=False)], 1)[0]
        out[fused] = logits, tokens
    assert out[True][1] == out[False][1]
    assert (out[True][0].argmax(-1) == out[False][0].argmax(-1)).all()
    assert np.abs(out[True][0] - out[False][0]).max() <= MAX_ABS
    assert np.isfinite(out[True][0]).all() and out[True][0].std() > 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_sequences_decoded_together_equal_alone(models, arch):
    model = HybridModel(str(models[(arch, "f32")]), fused=True)
    rng = np.random.default_rng(abs(hash(arch)) % 1000)
    for k in range(1, 9):
        requests = [Request(p, int(rng.integers(1, 9)), stop_at_eos=False, arrival=int(rng.integers(0, 4)))
                    for p in _prompts(rng, k)]
        together = _generate(model, requests, k)
        alone = [_generate(model, [Request(r.prompt, r.max_new_tokens, stop_at_eos=False)], 1)[0]
                 for r in requests]
        assert together == alone, f"K={k}"
        assert [len(t) for t in together] == [r.max_new_tokens for r in requests]
    assert model.stats.fused_builds == 1


def test_unfused_isolation_and_graph_cache(models):
    model = HybridModel(str(models[("qwen35", "f32")]), fused=False)
    rng = np.random.default_rng(3)
    requests = [Request(p, n, stop_at_eos=False, arrival=a)
                for p, n, a in zip(_prompts(rng, 3), (5, 2, 4), (0, 1, 1))]
    together = _generate(model, requests, 3)
    alone = [_generate(model, [Request(r.prompt, r.max_new_tokens, stop_at_eos=False)], 1)[0]
             for r in requests]
    assert together == alone
    assert model.stats.unfused_builds == len(model.stats.unfused_nodes) > 3
    assert model.stats.fused_builds == 0


def test_more_requests_than_slots_wait_and_reuse_slots(models):
    model = HybridModel(str(models[("qwen35moe", "f32")]), fused=True)
    rng = np.random.default_rng(11)
    requests = [Request(p, int(n), stop_at_eos=False)
                for p, n in zip(_prompts(rng, 7), rng.integers(1, 6, 7))]
    sched = Scheduler(model, 2, n_ctx=64)
    for r in requests:
        sched.submit(r)
    slots_seen = set()
    while not sched.done:
        sched.step()
        running = [s for s in sched.sequences if s.status == "running"]
        assert len(running) <= 2
        slots_seen.update(s.slot for s in running)
    assert slots_seen == {0, 1}
    alone = [_generate(model, [r], 1)[0] for r in requests]
    assert [s.generated for s in sched.sequences] == alone


def test_cancel_frees_the_slot_and_spares_the_others(models):
    model = HybridModel(str(models[("qwen3next", "f32")]), fused=True)
    rng = np.random.default_rng(5)
    requests = [Request(p, 6, stop_at_eos=False) for p in _prompts(rng, 3)]
    sched = Scheduler(model, 2, n_ctx=64)
    ids = [sched.submit(r) for r in requests]
    sched.step()
    sched.cancel(ids[0])
    assert sched.sequences[0].status == "cancelled" and sched.pool.free_slots() == 1
    sched.run()
    assert [s.generated for s in sched.sequences[1:]] == [_generate(model, [r], 1)[0] for r in requests[1:]]


def test_sampling_is_per_sequence_reproducible(models):
    model = HybridModel(str(models[("qwen35", "f32")]), fused=True)
    rng = np.random.default_rng(1)
    requests = [Request(p, 6, Sampling(temperature=0.8, seed=s), stop_at_eos=False)
                for s, p in enumerate(_prompts(rng, 3))]
    together = _generate(model, requests, 3)
    assert together == [_generate(model, [r], 1)[0] for r in requests]
    assert together != _generate(model, [Request(r.prompt, 6, stop_at_eos=False) for r in requests], 3)


def test_bad_requests_and_slots_are_refused(models):
    model = HybridModel(str(models[("qwen35", "f32")]), fused=True)
    pool = model.new_pool(1, 8)
    slot = pool.allocate()
    with pytest.raises(PoolFullError, match="all 1 slots"):
        pool.allocate()
    with pytest.raises(InputError, match="slot 3 is not a live slot"):
        model.forward(pool, [Entry(3, (1,))])
    with pytest.raises(InputError, match="slot listed twice"):
        model.forward(pool, [Entry(slot, (1,)), Entry(slot, (2,))])
    with pytest.raises(InputError, match="exceed the context of 8"):
        model.forward(pool, [Entry(slot, tuple(range(9)))])
    sched = Scheduler(model, 1, n_ctx=8)
    with pytest.raises(InputError, match="exceed the context of 8"):
        sched.submit(Request((1, 2, 3), 7))
    with pytest.raises(InputError, match="prompt of >= 1 token"):
        sched.submit(Request((), 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_fused_unfused_and_isolation(models, arch):
    """On the GPU (Triton kernel for the fused node): fused == unfused greedy tokens, logits
    within tolerance and close to the CPU; K = 1..8 sequences together equal alone."""
    path = str(models[(arch, "f32")])
    rng = np.random.default_rng(2)
    prompt = _prompts(rng, 1)[0] + (4, 5)
    cpu = HybridModel(path, fused=False).logits(prompt).numpy()
    out = {}
    for fused in (False, True):
        model = HybridModel(path, fused=fused, device="cuda")
        logits = model.logits(prompt).cpu().numpy()
        out[fused] = logits, _generate(model, [Request(prompt, 8, stop_at_eos=False)], 1)[0]
        assert np.abs(logits - cpu).max() <= 1e-3
    assert out[True][1] == out[False][1]
    assert np.abs(out[True][0] - out[False][0]).max() <= 1e-3
    model = HybridModel(path, fused=True, device="cuda")
    for k in (1, 3, 8):
        requests = [Request(p, int(rng.integers(1, 9)), stop_at_eos=False, arrival=int(rng.integers(0, 4)))
                    for p in _prompts(rng, k)]
        alone = [_generate(model, [Request(r.prompt, r.max_new_tokens, stop_at_eos=False)], 1)[0]
                 for r in requests]
        assert _generate(model, requests, k) == alone, f"K={k}"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_pools_are_updated_in_place(models, fused):
    """The executor owns the pools during a batch: the fused graph writes every pool in place
    (no copy per step); the unfused one copies the delta-net pools (read after its writes)."""
    model = HybridModel(str(models[("qwen35", "f32")]), fused=fused)
    pool = model.new_pool(2, 16)
    slots = [pool.allocate(), pool.allocate()]
    before = {name: t.data_ptr() for name, t in pool.tensors.items()}
    model.forward(pool, [Entry(slots[0], (1, 2, 3)), Entry(slots[1], (4,))])
    same = {name for name, t in pool.tensors.items() if t.data_ptr() == before[name]}
    kv_and_conv = {n for n in pool.tensors if not n.startswith("ssm_state.")}
    assert same == (set(pool.tensors) if fused else kv_and_conv)


def test_several_sequences_stream_in_live_panels_on_a_terminal(models):
    import io

    from rich.console import Console

    from gdnc.commands.generate import GenerateOptions, generate_text

    screen, log = io.StringIO(), io.StringIO()
    out = Console(file=screen, force_terminal=True, width=100)
    seqs = generate_text(models[("qwen35", "f32")], GenerateOptions(["a b", "class"], n_new=4, parallel=1),
                         out, Console(file=log, width=300))
    assert [len(s.generated) for s in seqs] == [4, 4]
    text = screen.getvalue()
    assert "[0] done: length" in text and "[1] done: length" in text and "[1] queued" in text
    assert "8 tokens for 2 sequence(s)" in log.getvalue()


def test_chunked_prefill_gives_the_same_tokens(models):
    """Prompts fed 3 tokens per batch, interleaved with the other sequences' decodes."""
    model = HybridModel(str(models[("qwen35moe", "f32")]), fused=True)
    rng = np.random.default_rng(9)
    requests = [Request(p + (7,) * 5, 6, stop_at_eos=False, arrival=a)
                for p, a in zip(_prompts(rng, 4), (0, 0, 2, 5))]
    assert _generate(model, requests, 4, prefill_chunk=3) == _generate(model, requests, 4)
