"""Real-size GGUF files on a GPU, weights as the files hold them (one device-tool call:
``benchmarks/gpu_real_size.sh``).

Per file: the load (process-warm: graph cache filled first), the bytes bound on the GPU against
the file's tensor bytes (each weight goes up once, in its own type), the peak GPU memory, the
logits of a 32-token prompt on CUDA against the CPU's, prefill and decode tokens/s (B = 1,
eager, after an untimed prompt and step that compile the Triton kernels), and the one-line
refusal of a pool too large for the GPU.
Usage: python3 benchmarks/gpu_weights.py FILE.gguf ... ; prints a table, writes
``$OUT/gpu_weights.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime import memory
from gdnc.runtime.state_pool import Entry

PROMPT, DECODE = 32, 32


def _sync() -> None:
    torch.cuda.synchronize()


def measure(path: str) -> dict[str, object]:
    HybridModel(path).fused_executor()  # fill the graph cache: time the weights, not the pass
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = HybridModel(path, device="cuda")
    pool = model.new_pool(2, PROMPT + DECODE + 1)
    model.fused_executor()
    load = time.perf_counter() - t0
    tokens = np.random.default_rng(0).integers(0, model.n_vocab, PROMPT).tolist()
    warm = pool.allocate()  # an untimed prompt and step first: Triton compiles its kernels there
    model.forward(pool, [Entry(warm, tuple(tokens))])
    model.forward(pool, [Entry(warm, (tokens[0],))])
    slot = pool.allocate()
    _sync()
    t1 = time.perf_counter()
    logits = model.forward(pool, [Entry(slot, tuple(tokens))])[0]
    _sync()
    prefill = PROMPT / (time.perf_counter() - t1)
    t2 = time.perf_counter()
    for _ in range(DECODE):
        nxt = int(logits.argmax())
        logits = model.forward(pool, [Entry(slot, (nxt,))])[0]
    _sync()
    decode = DECODE / (time.perf_counter() - t2)
    cuda_logits = model.logits(tokens)
    cpu_logits = HybridModel(path).logits(tokens)
    file_bytes = sum(model.file.tensor_nbytes(n) for n in model.file.tensor_names())
    return {"file": Path(path).name, "load_s": round(load, 2), "file_tensor_bytes": file_bytes,
            "bound_on_gpu_bytes": model.weights.nbytes,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(),
            "max_abs_cuda_vs_cpu": float((cuda_logits.cpu() - cpu_logits).abs().max()),
            "max_abs_cpu_logit": float(cpu_logits.abs().max()),
            "top1_cuda_vs_cpu": float((cuda_logits.cpu().argmax(-1) == cpu_logits.argmax(-1)).float().mean()),
            "prefill_tok_s": round(prefill, 1), "decode_tok_s": round(decode, 1)}


def refusal(path: str) -> str:
    try:
        HybridModel(path, device="cuda").new_pool(64, 1 << 20)
    except memory.MemoryShortError as exc:
        return str(exc)
    return "not refused"


def main(paths: list[str]) -> None:
    rows = [measure(p) for p in paths]
    for r in rows:
        print(f"{r['file']:18} load {r['load_s']:5.2f} s  bound {memory.size(r['bound_on_gpu_bytes'])} "
              f"(file {memory.size(r['file_tensor_bytes'])})  peak {memory.size(r['peak_gpu_bytes'])}  "
              f"cuda-cpu {r['max_abs_cuda_vs_cpu']:.2e} (of {r['max_abs_cpu_logit']:.1f}) "
              f"top1 {r['top1_cuda_vs_cpu']:.3f}  "
              f"prefill {r['prefill_tok_s']} tok/s  decode {r['decode_tok_s']} tok/s")
    refused = refusal(paths[0])
    print("pool too large:", refused)
    out = Path(os.environ.get("OUT", ".")) / "gpu_weights.json"
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows,
                               "pool_refusal": refused}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
