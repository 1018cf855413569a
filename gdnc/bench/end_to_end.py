"""``gdnc bench MODEL --e2e``: the fused model end to end, as ``gdnc run`` serves it.

Three figures in tokens per second, each the median of ``rounds`` timed rounds after one
untimed warm-up (graph building, kernel builds): prefill of one ``prompt``-token prompt from an
empty state (llama-bench's pp512), ``decode`` greedy steps of one sequence (tg64: each step
feeds the previous step's argmax), and ``decode`` steps of ``seqs`` sequences together. Greedy
argmax is read back each step, as generation does; on CUDA each timed call ends synchronized.
Then the host time of a decode step (``decode_host_us``: until ``forward`` returns, nothing
read back) and whether its steps replayed CUDA graphs (``cuda_graphs``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gdnc import progress
from gdnc.bench.timing import copy_bandwidth, device_info, synchronizer
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry, StatePool

PROMPT, DECODE, SEQS, ROUNDS = 512, 64, 4, 3


@dataclass
class EndToEnd:
    """What ``--e2e`` measured (tokens per second: medians over ``rounds``)."""

    model: str
    arch: str
    device: dict
    compiled: bool
    rounds: int
    prompt: int
    decode: int
    seqs: int
    prefill_tok_s: float
    decode_tok_s: float
    batch_decode_tok_s: float
    weight_bytes: int
    copy_bandwidth_gbps: float
    decode_host_us: float
    cuda_graphs: bool

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def decode_bound_tok_s(self) -> float:
        """One sequence's decode rate if every step only read the weights once at the copy
        bandwidth (bytes read + written) / 2."""
        return self.copy_bandwidth_gbps * 1e9 / 2 / max(self.weight_bytes, 1)


def measure_e2e(path: Path, device: torch.device, *, rounds: int = ROUNDS, prompt: int = PROMPT,
                decode: int = DECODE, seqs: int = SEQS, compiled: bool = True,
                console: object = None, show: bool = False) -> EndToEnd:
    """The three figures for GGUF hybrid ``path`` on ``device`` (see the module)."""
    model = HybridModel(str(path), fused=True, device=str(device), compiled=compiled)
    sync = synchronizer(device)
    pool = model.new_pool(seqs, prompt + decode + 1)
    rng = np.random.default_rng(0)
    tokens = tuple(int(t) for t in rng.integers(0, model.n_vocab, prompt))
    rates: dict[str, list[float]] = {"prefill": [], "decode": [], "batch": []}
    with progress.bars(console, enabled=show):  # type: ignore[arg-type]
        bar = progress.task("end to end", total=rounds + 1)
        for r in range(rounds + 1):
            timed = r > 0  # round 0 warms up
            bar.describe(f"end to end, round {r}" if timed else "end to end, warm-up")
            seconds = _timed(lambda: _fresh_forward(model, pool, [tokens]), sync)
            _record(rates["prefill"], timed, prompt, seconds)
            seconds = _timed(lambda: _greedy(model, pool, 1, decode), sync)
            _record(rates["decode"], timed, decode, seconds)
            seconds = _timed(lambda: _greedy(model, pool, seqs, decode), sync)
            _record(rates["batch"], timed, seqs * decode, seconds)
            bar.advance()
    graphs = model.fused_executor().graphs
    return EndToEnd(
        model=str(path), arch=model.cfg.arch, device=device_info(device), compiled=compiled,
        rounds=rounds, prompt=prompt, decode=decode, seqs=seqs,
        prefill_tok_s=statistics.median(rates["prefill"]), decode_tok_s=statistics.median(rates["decode"]),
        batch_decode_tok_s=statistics.median(rates["batch"]), weight_bytes=_step_bytes(model),
        copy_bandwidth_gbps=copy_bandwidth(device, 3), decode_host_us=_host_us(model, pool, sync, decode),
        cuda_graphs=graphs is not None and graphs.refused is None and graphs.replays > 0)


def _step_bytes(model: HybridModel) -> int:
    """Bytes of the weights one decode step reads: every tensor but the token embedding's rows
    (read whole when the output projection is tied to it)."""
    f = model.file
    names = f.tensor_names()
    tied = "output.weight" not in names
    return sum(f.tensor_nbytes(n) for n in names if tied or n != "token_embd.weight")


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _host_us(model: HybridModel, pool: StatePool, sync: Callable[[], None], steps: int) -> float:
    """Median host time of one decode step of one sequence, in µs: from an idle device until
    ``forward`` returns, nothing read back (on a GPU the kernels may still run; on the CPU it
    is the whole step)."""
    (slot,) = _fresh_slots(pool, 1)
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        model.forward(pool, [Entry(slot, (1,))])
        times.append(time.perf_counter() - start)
    sync()
    return statistics.median(times) * 1e6


def _record(rates: list[float], timed: bool, tokens: int, seconds: float) -> None:
    if timed:
        rates.append(tokens / seconds)


def _fresh_slots(pool: StatePool, n: int) -> list[int]:
    """``n`` zeroed slots (every slot given back first)."""
    for slot in range(pool.slots):
        if pool.live[slot]:
            pool.release(slot)
    return [pool.allocate() for _ in range(n)]


def _fresh_forward(model: HybridModel, pool: StatePool, prompts: list[tuple[int, ...]]) -> list[torch.Tensor]:
    slots = _fresh_slots(pool, len(prompts))
    return model.forward(pool, [Entry(s, p) for s, p in zip(slots, prompts)])


def _greedy(model: HybridModel, pool: StatePool, seqs: int, steps: int) -> None:
    """``steps`` greedy decode steps of ``seqs`` sequences from a one-token prompt each (that
    prompt's forward is timed too: it is a decode step)."""
    slots = _fresh_slots(pool, seqs)
    last = [1 + n for n in range(seqs)]
    for _ in range(steps):
        logits = model.forward(pool, [Entry(s, (t,)) for s, t in zip(slots, last)])
        last = torch.stack(logits).argmax(-1).tolist()
