"""Long serving runs: sequences come and go, every one gets exactly its isolated tokens.

- soak: >= 2,000 scheduler steps on the fused path, requests arriving at random steps with
  random prompt lengths and budgets, chunked prefill mixed with decode, random cancellations,
  slots reused many times; afterwards every sequence's tokens equal the model's greedy tokens
  for that sequence alone (one teacher-forced pass each, and for a random subset a real
  isolated run token by token; a cancelled one: a prefix), and no live sequence ever lost or
  shared its slot;
- a NaN or Inf in one sequence's input (a poisoned embedding row) fails that sequence alone,
  with a reason; in the faulty batch the other sequences' logits and pool slots are
  bit-identical to the same batch without the fault, and they finish with their own tokens;
- pool exhaustion queues requests, or refuses them with a clear message past a queue limit;
  it never evicts a live sequence.

Workloads are drawn fresh each run (the seed is in every failure message). Greedy tokens of
a batched and an isolated run may differ only where the isolated run's top-2 logits are
within float error (a near-tie); any other difference fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corpus.gguf_rewrite import rewrite
from corpus.tiny_gguf import write_models
from gdnc.frontends.gguf_file import GgufFile
from gdnc.lowering.gated_delta_net import native_cpu
from gdnc.lowering.gated_delta_net.backends import BACKENDS
from gdnc.lowering.gated_delta_net.cpu import CHUNK
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.generation import FINISHED, Request, Scheduler
from gdnc.runtime.state_pool import Entry, PoolFullError
from tests.robustness.harness import TALLY, hold_to_promise, run_cli

SOAK_STEPS = 2000
ISOLATED_RUNS = 40  # sequences of the soak also decoded alone, token by token
N_CTX = 64
NEAR_TIE = 1e-4  # |top1 - top2| below which float error may pick either token
POISONED_TOKEN = 77
# "auto" runs sequences this long chunked on the CPU (the C recurrence's threshold where it was built)
CPU_CHUNKED = BACKENDS["native" if native_cpu.reason() is None else "cpu"].chunked_min_tokens
LONGEST = CPU_CHUNKED + 2 * CHUNK  # the chunked prompts are shorter


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    paths = write_models(tmp_path_factory.mktemp("soak"), ["qwen35", "qwen35moe", "qwen3next"],
                         variants=("f32",))
    return {p.name.split("-tiny-")[0]: p for p in paths}


def _alone_greedy(model: HybridModel, seq) -> list[int]:
    """The greedy token after every prefix of ``seq``'s prompt + generated tokens, from ONE
    forward pass of the sequence alone (teacher forcing): equal to ``seq.generated`` exactly
    when an isolated greedy run gives the same tokens."""
    ids = list(seq.request.prompt) + seq.generated[:-1]
    logits = model.logits(ids)[len(seq.request.prompt) - 1:]
    return [int(t) for t in logits.argmax(-1)]


def _isolated(model: HybridModel, request: Request) -> list[int]:
    sched = Scheduler(model, 1, n_ctx=N_CTX)
    sched.submit(Request(request.prompt, request.max_new_tokens, stop_at_eos=request.stop_at_eos))
    return sched.run()[0].generated


def _same_tokens(model: HybridModel, prompt: tuple[int, ...], batched: list[int], alone: list[int],
                 context: str, complete: bool = True) -> None:
    """``batched`` equals ``alone`` (a prefix of it unless ``complete``), or departs from it
    only at a near-tie of the isolated run."""
    for i, (a, b) in enumerate(zip(batched, alone)):
        if a != b:
            logits = model.logits(list(prompt) + alone[:i])[-1]
            top2 = torch.topk(logits, 2).values
            margin = float(top2[0] - top2[1])
            assert margin < NEAR_TIE, (f"{context}: token {i} is {a} batched but {b} alone "
                                       f"(not a near-tie: top-2 margin {margin:.2e})")
            TALLY.notes["serving", "departures at a near-tie"] += 1
            return
    lengths = f"{context}: {len(batched)} tokens batched, {len(alone)} alone"
    assert len(batched) == len(alone) if complete else len(batched) <= len(alone), lengths


def test_soak_sequences_come_and_go(model_paths):
    _soak(model_paths["qwen35"], SOAK_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_long_soak(model_paths, arch):
    _soak(model_paths[arch], 10 * SOAK_STEPS)


def _soak(path: Path, steps: int) -> None:
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    model = HybridModel(str(path), fused=True)
    sched = Scheduler(model, parallel=6, n_ctx=N_CTX, prefill_chunk=5)
    slot_of: dict[int, int] = {}  # running sequence -> the slot it was admitted to
    admitted = cancelled = 0
    while sched.timing.steps < steps or not sched.done:
        step = sched.timing.steps
        if step < steps:
            for _ in range(rng.poisson(0.3)):
                prompt = tuple(int(t) for t in rng.integers(0, 500, int(rng.integers(1, 17))))
                sched.submit(Request(prompt, int(rng.integers(1, 41)), arrival=step + int(rng.integers(0, 3)),
                                     stop_at_eos=bool(rng.random() < 0.5)))
            live = [s for s in sched.sequences if s.status in ("queued", "running")]
            if live and rng.random() < 0.02:
                sched.cancel(live[int(rng.integers(len(live)))].id)
                cancelled += 1
        sched.step()
        running = [s for s in sched.sequences if s.status == "running"]
        slots = [s.slot for s in running]
        assert len(set(slots)) == len(slots), f"seed {seed}: two live sequences share a slot: {slots}"
        for s in running:
            if s.id not in slot_of:
                slot_of[s.id] = s.slot  # type: ignore[assignment]
                admitted += 1
            assert s.slot == slot_of[s.id], f"seed {seed}: sequence {s.id} moved from its slot"
    assert sched.timing.steps >= steps
    assert admitted > steps // 20, f"seed {seed}: slots were reused only {admitted} times"
    assert sched.timing.prefill_tokens and sched.timing.decode_tokens
    assert all(s.status in FINISHED and s.status != "failed" for s in sched.sequences)
    decoded_alone = set(rng.choice(len(sched.sequences), ISOLATED_RUNS, replace=False).tolist())
    for seq in sched.sequences:
        TALLY.note("serving", f"soak sequences {seq.status} with their tokens alone")
        context = f"seed {seed}, sequence {seq.id} ({seq.status})"
        if seq.generated:
            _same_tokens(model, seq.request.prompt, seq.generated, _alone_greedy(model, seq), context)
        if seq.id in decoded_alone:  # and a real isolated run, token by token
            _same_tokens(model, seq.request.prompt, seq.generated, _isolated(model, seq.request),
                         context, complete=seq.status == "done")
    print(f"soak: {sched.timing.steps} steps, {len(sched.sequences)} sequences "
          f"({admitted} admitted, {cancelled} cancellations), seed {seed}")


def _poisoned(path: Path, value: float, token: int = POISONED_TOKEN) -> Path:
    """``path`` with ``value`` in the embedding row of ``token``."""
    emb = np.array(GgufFile(path).tensor("token_embd.weight"))
    emb[token] = value
    name = "nan" if np.isnan(value) else "inf"
    return rewrite(path, path.with_name(f"{name}-{token}-{path.name}"),
                   tensors={"token_embd.weight": emb})


SHORT_PROMPTS = ((1, 2, 3), (5, POISONED_TOKEN, 6, 7), (9,))


def _two_steps(path: Path, fused: bool, device: str = "cpu",
               prompts: tuple[tuple[int, ...], ...] = SHORT_PROMPTS):
    """Prefill of three prompts (only the middle one holds the poisoned token), then a decode
    step; the logits of both steps and the pool rows of sequences 0 and 2."""
    model = HybridModel(str(path), fused=fused, device=device)
    pool = model.new_pool(4, max(map(len, prompts)) + 4)
    slots = [pool.allocate() for _ in range(3)]
    batches = [prompts, [(4,), (8,), (10, 11)]]
    logits = [model.forward(pool, [Entry(s, t) for s, t in zip(slots, b)]) for b in batches]
    return logits, {k: v[[slots[0], slots[2]]].clone() for k, v in pool.tensors.items()}


def _faults_stay_in_sequence_1(path: Path, fused: bool, device: str = "cpu",
                               prompts: tuple[tuple[int, ...], ...] = SHORT_PROMPTS,
                               context: str = "") -> None:
    """With a NaN, then an Inf embedding row, sequence 1's logits are non-finite and the
    logits and pool rows of sequences 0 and 2 bit-identical to the clean model's."""
    clean_logits, clean_pools = _two_steps(path, fused, device, prompts)
    for value in (np.nan, np.inf):
        logits, pools = _two_steps(_poisoned(path, value), fused, device, prompts)
        for step in range(2):
            assert not torch.isfinite(logits[step][1]).all(), (context, value, step)
            for n in (0, 2):
                assert torch.equal(logits[step][n], clean_logits[step][n]), (context, value, step, n)
        for name, rows in pools.items():
            assert torch.equal(rows, clean_pools[name]), f"{context} {value}: pool {name} of a clean sequence"
        TALLY.note("serving", "NaN/Inf inputs kept in their sequence")


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_a_non_finite_input_stays_in_its_sequence(model_paths, arch, fused, device):
    _faults_stay_in_sequence_1(model_paths[arch], fused, device)


def _chunked_prompts(rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """Three prompts long enough for the chunked kernel, the first ending inside a chunk
    and the poisoned token among the next prompt's tokens that fill that chunk."""
    def prompt(n: int) -> list[int]:
        return [int(t) + (t >= POISONED_TOKEN) for t in rng.integers(0, 499, n)]

    first = int(rng.choice([n for n in range(CPU_CHUNKED, LONGEST) if n % CHUNK]))
    fill = -first % CHUNK  # tokens of the next prompt in the first one's last chunk
    middle = prompt(int(rng.integers(max(CPU_CHUNKED, fill), LONGEST)))
    middle[int(rng.integers(0, fill))] = POISONED_TOKEN
    return (tuple(prompt(first)), tuple(middle), tuple(prompt(int(rng.integers(CPU_CHUNKED, LONGEST)))))


@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_a_non_finite_input_stays_in_its_sequence_through_a_chunked_prefill(model_paths, arch):
    """Prompts of >= CPU_CHUNKED tokens prefilled together on the fused CPU path (the chunked
    kernel): the poisoned one fails alone; the others' logits, pool rows and tokens are the
    clean run's."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    prompts = _chunked_prompts(np.random.default_rng(seed))
    context = f"seed {seed}, prompt lengths {[len(p) for p in prompts]}"
    _faults_stay_in_sequence_1(model_paths[arch], True, "cpu", prompts, context)
    requests = [Request(p, 4, stop_at_eos=False) for p in prompts]
    runs = []
    for path in (model_paths[arch], _poisoned(model_paths[arch], np.nan)):
        sched = Scheduler(HybridModel(str(path), fused=True), 3, n_ctx=LONGEST + 8)
        for r in requests:
            sched.submit(r)
        runs.append(sched.run())
    clean, poisoned = runs
    assert poisoned[1].status == "failed", context
    for n in (0, 2):
        # a clean sequence may itself generate the poisoned token: fed back, it reads the
        # poisoned row honestly and fails there, after the same tokens
        fed_back = POISONED_TOKEN in clean[n].generated[:-1]
        cut = clean[n].generated.index(POISONED_TOKEN) + 1 if fed_back else None
        assert poisoned[n].status == ("failed" if fed_back else "done"), f"{context}: sequence {n}"
        assert poisoned[n].generated == clean[n].generated[:cut], f"{context}: sequence {n}"
    TALLY.note("serving", "NaN inputs kept in their sequence through a chunked prefill")


def test_a_failed_sequence_is_reported_and_its_slot_reused(model_paths):
    clean = HybridModel(str(model_paths["qwen35"]))
    model = HybridModel(str(_poisoned(model_paths["qwen35"], np.nan)))
    requests = [Request((3, 4, 5), 12, stop_at_eos=False), Request((6, POISONED_TOKEN, 8), 12),
                Request((9, 10), 12, stop_at_eos=False), Request((11, 12, 13, 14), 6, arrival=4,
                                                                stop_at_eos=False)]
    sched = Scheduler(model, 3, n_ctx=N_CTX)
    for r in requests:
        sched.submit(r)
    seqs = sched.run()
    assert seqs[1].status == "failed" and seqs[1].generated == []
    assert "non-finite logits (NaN) at scheduler step 0" in (seqs[1].finish_reason or "")
    for n in (0, 2, 3):  # the late request took the failed sequence's (zeroed) slot
        assert seqs[n].status == "done"
        _same_tokens(clean, requests[n].prompt, seqs[n].generated, _isolated(clean, requests[n]), f"seq {n}")
    TALLY.note("serving", "failed sequences reported, slot reused")


def _cli_poisoned(path: Path, bad: str, good: str = "") -> Path:
    """``path`` with a NaN embedding row for the first token of ``bad`` (not in ``good``)."""
    from gdnc.frontends.gguf_tokenizer import GgufTokenizer

    tok = GgufTokenizer.from_metadata(GgufFile(path).metadata)
    first = tok.encode(bad)[0]
    assert first not in tok.encode(good)
    return _poisoned(path, np.nan, first)


@pytest.mark.parametrize(("good", "bad"), [
    ("The for statement", "import os"),
    # >= CPU_CHUNKED tokens each (the chunked kernel); the good one (24 tokens) ends
    # inside a chunk, and the bad one's first token follows it
    ("The for statement iterates over the items of any sequence, in order.",
     "import os and sys, then read every line of the file into a list of words."),
], ids=["short", "chunked"])
def test_cli_reports_the_failed_sequence_and_prints_the_others(model_paths, good, bad):
    path = model_paths["qwen35"]
    poisoned = _cli_poisoned(path, bad, good)
    outcome = run_cli(["run", str(poisoned), "-p", good, "-p", bad, "-n", "4", "-q"])
    hold_to_promise("serving", "one poisoned prompt of two", outcome,
                    mention="1 of 2 sequence(s) failed (the others completed); sequence 1: non-finite")
    alone = run_cli(["run", str(path), "-p", good, "-n", "4", "-q"])
    assert alone.code == 0 and alone.stdout.strip() and alone.stdout.strip() in outcome.stdout


def test_cli_says_when_every_sequence_failed(model_paths):
    poisoned = _cli_poisoned(model_paths["qwen35"], "import os")
    outcome = run_cli(["run", str(poisoned), "-p", "import os", "-p", "import sys", "-n", "4", "-q"])
    hold_to_promise("serving", "every prompt poisoned", outcome,
                    mention="all 2 sequences failed; sequence 0: non-finite")
    assert "completed" not in outcome.stderr


def test_pool_exhaustion_queues_or_refuses_never_evicts(model_paths):
    model = HybridModel(str(model_paths["qwen35"]))
    sched = Scheduler(model, 2, n_ctx=N_CTX, max_waiting=2)
    ids = [sched.submit(Request((1 + i, 2), 5, stop_at_eos=False)) for i in range(4)]
    with pytest.raises(PoolFullError, match="all 2 slots are busy and 2 request.s. are waiting"):
        sched.submit(Request((7,), 5))
    TALLY.note("serving", "requests refused by a full queue")
    sched.step()
    assert [s.status for s in sched.sequences] == ["running", "running", "queued", "queued"]
    with pytest.raises(PoolFullError):
        sched.submit(Request((7,), 5))
    seqs = sched.run()
    assert all(seqs[i].status == "done" and len(seqs[i].generated) == 5 for i in ids)
    sched.submit(Request((7,), 5))  # room again
    with pytest.raises(PoolFullError, match="state pool full: all 2 slots hold live sequences"):
        pool = model.new_pool(2, 8)
        pool.allocate(), pool.allocate(), pool.allocate()


def test_a_pool_too_big_for_memory_is_one_line(model_paths):
    """--ctx 10^8 asks for ~48 GiB of KV cache: a one-line error naming the bytes before anything
    is allocated, in a real process under an address-space limit."""
    import os
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run([sys.executable, "-m", "gdnc", "run", str(model_paths["qwen35"]), "-p", "hi",
                           "-n", "1", "--ctx", str(10**8)], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: a context of 100000000 tokens for 1 sequence(s) needs about ")
    assert "(KV cache and states 47.7 GiB, one batch " in lines[0] and "fix: " in lines[0]
    TALLY.note("serving", "pools too big for memory refused")
