"""Long contexts: attention memory grows with T, not T²; long batches run in chunks that give
the one-shot results; a context that cannot fit is refused in one line before anything is
allocated; a context beyond the trained one is one warning line.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdnc.errors import GdncWarning
from gdnc.models.qwen_hybrid.batch import context_bytes
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime import memory
from gdnc.runtime.batch_plan import Limits, Piece, plan_runs, score_elements
from gdnc.runtime.generation import Request, Scheduler
from gdnc.runtime.state_pool import Entry
from tests.frontends.test_gguf_models import ARCHS, gguf_path
from tests.robustness.harness import TALLY, hold_to_promise, run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny-qwen35-f16.gguf"
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ memory grows with T, not T²

PEAK_CHILD = """
import resource, sys
import numpy as np
from gdnc.models.qwen_hybrid.model import HybridModel
model = HybridModel(sys.argv[1])
ids = np.random.default_rng(int(sys.argv[3])).integers(0, model.cfg.n_vocab, int(sys.argv[2]))
model.logits(ids[:16])  # builds the graph; the baseline includes it
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
logits = model.logits(ids)
assert logits.shape == (len(ids), model.cfg.n_vocab) and bool(logits.isfinite().all())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def _peak_growth(length: int, seed: int) -> int:
    """Bytes the peak RSS of a fresh process grows by for ``logits`` over ``length`` tokens."""
    args = [sys.executable, "-W", "ignore", "-c", PEAK_CHILD, str(TINY), str(length), str(seed)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def test_logits_of_8k_tokens_stay_within_a_linear_bound():
    """T = 8192 on the example model (6 heads): a [T, T] float32 score tensor alone is 256 MiB
    per head, 1.5 GiB for the 6 (and the old float64 mask 512 MiB); chunks of 512 tokens
    need 6 x 512 x T floats per score tensor (96 MiB). The bound is 400 MiB over the process's
    peak after a 16-token call."""
    seed = int(np.random.default_rng().integers(1 << 30))
    grown = _peak_growth(8192, seed)
    assert grown < 400 << 20, f"seed {seed}: peak RSS grew by {grown >> 20} MiB for T = 8192"


# ------------------------------------------------------------------ the plan of runs

@st.composite
def batches(draw):
    n = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    past = draw(st.lists(st.integers(0, 2000), min_size=n, max_size=n))
    limits = Limits(chunk=draw(st.integers(1, 600)), score_budget=draw(st.integers(1, 1 << 22)))
    return lengths, past, draw(st.integers(1, 16)), limits


@settings(max_examples=300, **SETTINGS)
@given(case=batches())
def test_runs_feed_every_token_once_in_order_within_the_limits(case):
    lengths, past, heads, limits = case
    runs = plan_runs(lengths, past, heads, limits)
    fed = [0] * len(lengths)
    for run in runs:
        assert run and len({p.index for p in run}) == len(run)
        for p in run:
            assert p.start == fed[p.index] and fed[p.index] < p.end <= lengths[p.index]
            assert p.end - p.start <= limits.chunk
            fed[p.index] = p.end
        # over the budget only where nothing smaller exists: one sequence feeding one token
        assert score_elements(run, past, heads) <= limits.score_budget or \
            (len(run) == 1 and run[0].end - run[0].start == 1)
    assert fed == lengths
    if max(lengths) <= limits.chunk and len(lengths) * heads * max(lengths) * max(
            p + n for p, n in zip(past, lengths)) <= limits.score_budget:
        assert runs == [[Piece(i, 0, n) for i, n in enumerate(lengths)]]  # fits: one run


# ------------------------------------------------------------------ chunked = one shot

@pytest.fixture(scope="module")
def fixtures() -> Iterator[dict[str, HybridModel]]:
    """The fixture models, run on one thread (many small runs: a second thread only spins)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {arch: HybridModel(str(gguf_path(arch)), fused=True) for arch in ARCHS}
    finally:
        torch.set_num_threads(threads)


@st.composite
def chunked_batches(draw):
    arch = draw(st.sampled_from(ARCHS))
    n = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    past = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    limits = Limits(chunk=draw(st.integers(2, 13)), score_budget=draw(st.integers(200, 6000)))
    return arch, lengths, past, limits, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=12, **SETTINGS)
@given(case=chunked_batches())
def test_chunked_runs_give_the_one_shot_logits_and_states(fixtures, case):
    """Sequences with some tokens already seen, fed in uneven chunks and split into runs by a
    small score budget: every logit and every pool within 1e-5 of one run of the whole batch."""
    arch, lengths, past, limits, seed = case
    model = fixtures[arch]
    rng = np.random.default_rng(seed)
    pool = model.new_pool(len(lengths), 64)
    slots = [pool.allocate() for _ in lengths]
    warm = [Entry(s, tuple(int(t) for t in rng.integers(0, 384, p))) for s, p in zip(slots, past) if p]
    if warm:
        model.forward(pool, warm)
    batch = [Entry(s, tuple(int(t) for t in rng.integers(0, 384, n))) for s, n in zip(slots, lengths)]
    out = {}
    for name, lim in (("one", Limits(chunk=10**6, score_budget=1 << 40)), ("chunked", limits)):
        model.limits = lim
        run_pool = copy.deepcopy(pool)
        logits = [x.numpy() for x in model.forward(run_pool, batch, all_logits=True)]
        out[name] = logits, {k: v.numpy() for k, v in run_pool.tensors.items()}, run_pool.n_past
    last = [x.numpy() for x in model.forward(copy.deepcopy(pool), batch)]  # chunked, last rows only
    model.limits = Limits()
    (one, one_pools, one_past), (got, got_pools, got_past) = out["one"], out["chunked"]
    assert got_past == one_past
    for a, b, c in zip(one, got, last):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5, f"seed {seed}"
        assert np.abs(a[-1] - c).max() <= 1e-5, f"seed {seed}"
    for k in one_pools:
        assert np.abs(one_pools[k] - got_pools[k]).max() <= 1e-5, f"{k}, seed {seed}"


def test_default_runs_split_a_long_prompt_and_match_one_shot(fixtures):
    """The automatic chunk (512) on a 1100-token sequence beside a short one: three runs, the
    logits of one run of both."""
    model = fixtures["qwen35"]
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 30))
    ids = [tuple(int(t) for t in np.random.default_rng(seed + i).integers(0, 384, n))
           for i, n in enumerate((1100, 7))]
    assert len(plan_runs([1100, 7], [0, 0], model.cfg.n_head, model.limits)) == 3
    pool = model.new_pool(2, 1100)
    batch = [Entry(pool.allocate(), ids[0]), Entry(pool.allocate(), ids[1])]
    chunked = model.forward(copy.deepcopy(pool), batch, all_logits=True)
    model.limits = Limits(chunk=10**6, score_budget=1 << 40)
    try:
        whole = model.forward(copy.deepcopy(pool), batch, all_logits=True)
    finally:
        model.limits = Limits()
    for a, b in zip(whole, chunked):
        assert float((a - b).abs().max()) <= 1e-5, f"seed {seed}"


def test_the_scheduler_feeds_a_long_prompt_in_chunks_by_default(fixtures):
    """``gdnc run``'s scheduler: a 1200-token prompt goes 512 tokens a step (the model's chunk),
    so a short request beside it decodes between the chunks, with the tokens it makes alone."""
    model = fixtures["qwen35moe"]
    seed = int(np.random.default_rng().integers(1 << 30))
    rng = np.random.default_rng(seed)
    long, short = (tuple(int(t) for t in rng.integers(0, 384, n)) for n in (1200, 5))
    sched = Scheduler(model, 2, n_ctx=1210)
    ids = [sched.submit(Request(p, n, stop_at_eos=False)) for p, n in ((long, 3), (short, 4))]
    fed = []
    while not sched.done:
        sched.step()
        fed.append((sched.sequences[ids[0]].fed, len(sched.sequences[ids[1]].generated)))
    assert fed[:4] == [(512, 1), (1024, 2), (1200, 3), (1200, 4)], f"seed {seed}"
    alone = Scheduler(model, 1, n_ctx=10)
    alone.submit(Request(short, 4, stop_at_eos=False))
    assert alone.run()[0].generated == sched.sequences[ids[1]].generated, f"seed {seed}"


# ------------------------------------------------------------------ a context that cannot fit

def test_a_context_that_cannot_fit_is_refused_before_allocating(fixtures, monkeypatch):
    model = fixtures["qwen35"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 << 20)
    need = {**context_bytes(model.cfg, 4, 10**6, model.limits), "weights": model.weights.unbound_bytes()}
    with pytest.raises(memory.MemoryShortError) as exc:
        model.new_pool(4, 10**6)
    msg = str(exc.value)
    assert "\n" not in msg and exc.value.fix and "--ctx" in exc.value.fix and "--parallel" in exc.value.fix
    assert msg.startswith(f"a context of 1000000 tokens for 4 sequence(s) needs about "
                          f"{memory.size(sum(need.values()))} (KV cache and states "
                          f"{memory.size(need['KV cache and states'])}")
    assert msg.endswith("but 100 MiB is available on cpu")
    assert model.new_pool(1, 64).n_ctx == 64  # a small one still fits


@pytest.mark.parametrize("args", [["run", "{model}", "-p", "hi", "-n", "1", "--ctx", "1000000"],
                                  ["logits", "{model}", "--tokens", " ".join(["5"] * 3000), "-o", "{out}"]],
                         ids=["run", "logits"])
def test_cli_context_too_large_is_one_line_naming_the_bytes(args, monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 50 << 20)
    argv = [a.format(model=gguf_path("qwen35"), out=tmp_path / "x.npy") for a in args]
    outcome = run_cli(argv, seconds=60)
    hold_to_promise("long-context", f"{args[0]} with 50 MiB available", outcome, mention="needs about")
    assert "but 50 MiB is available on cpu" in outcome.stderr and "fix:" in outcome.stderr
    assert not (tmp_path / "x.npy").exists()


def test_a_context_beyond_the_trained_one_is_one_warning_line(fixtures):
    outcome = run_cli(["run", str(gguf_path("qwen35")), "-p", "hi", "-n", "1", "-q", "--ctx", "5000"],
                      seconds=60)
    assert outcome.code == 0, outcome.stderr
    assert outcome.error_lines == [f"warning: a context of 5000 tokens is beyond the 4096 that "
                                   f"{gguf_path('qwen35')} was trained on: output past 4096 tokens "
                                   f"may degrade"]
    TALLY.note("long-context", "beyond the trained context: one warning line")
    with pytest.warns(GdncWarning, match="beyond the 4096"):
        fixtures["qwen35"].new_pool(1, 4097)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixtures["qwen35"].new_pool(1, 4096)  # at the trained context: no warning


def test_available_memory_is_read():
    cpu = memory.available_bytes(torch.device("cpu"))
    assert 0 < cpu <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
