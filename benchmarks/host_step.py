"""The host time of a decode step that replays a CUDA graph, less the CUDA calls, on any machine:
``HybridModel.forward`` of one sequence with the executor's ``graphs`` replaced by a stub that
returns the step's outputs at once. What is left is everything the host does per replayed step
in Python (the batch checks, the padded feeds, the names and dtypes checks, the pool swap);
the CUDA calls a real replay adds are one pinned staging copy per dtype, an event, the replay
and a clone of the logits. Usage: .venv/bin/python benchmarks/host_step.py [FILE.gguf]
(default: the bundled example model); prints µs per step, the median of 5 rounds of 2,000.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry

ROOT = Path(__file__).resolve().parents[1]


class _Replay:
    """Stands in for ``CudaGraphs``: the outputs of a step, returned as a replay returns them."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        self.outputs = outputs

    def run(self, feeds: object, pools: object) -> list[torch.Tensor]:
        return self.outputs


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "examples" / "tiny-qwen35-f16.gguf")
    model = HybridModel(path)
    pool = model.new_pool(4, 1024)
    slot = pool.allocate()
    model.forward(pool, [Entry(slot, tuple(range(1, 65)))])
    ex = model.fused_executor()
    outs = {f"{n}.out": t for n, t in pool.tensors.items()} | {"logits": torch.zeros(1, model.n_vocab)}
    ex.graphs = _Replay([outs[n] for n in ex.model.graph.outputs])  # type: ignore[assignment]
    rounds = []
    for _ in range(6):
        start = time.perf_counter()
        for _ in range(2000):
            model.forward(pool, [Entry(slot, (5,))])
            pool.n_past[slot] -= 1  # the context never fills
        rounds.append((time.perf_counter() - start) / 2000 * 1e6)
    us = statistics.median(rounds[1:])
    print(f"{Path(path).name}: {us:.1f} µs of host Python per replayed decode step (CUDA calls not included)")


if __name__ == "__main__":
    main()
