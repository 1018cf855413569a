"""Tokens/s of GGUF hybrids, fused vs unfused graphs, side by side in one run.

For each example model (corpus/tiny_gguf.py, written to a temporary folder) and each
graph kind: one batch prefilling B prompts of P tokens, then N greedy decode steps of all B
sequences together. Graph building is timed apart (the fused graph is built once; unfused
graphs once per batch composition, then cached) and warmed up before the timed runs.
Usage: PYTHONPATH=. python3 benchmarks/bench_generate.py [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/
from corpus.tiny_gguf import write_models  # noqa: E402
from gdnc.atomic import write_text  # noqa: E402
from gdnc.models.qwen_hybrid.model import HybridModel  # noqa: E402
from gdnc.runtime.state_pool import Entry  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _run(model: HybridModel, prompts: list[tuple[int, ...]], n_new: int) -> tuple[float, float, list]:
    """(prefill seconds, decode seconds, generated tokens) for one batch of prompts."""
    pool = model.new_pool(len(prompts), max(map(len, prompts)) + n_new)
    slots = [pool.allocate() for _ in prompts]
    _sync(str(model.device))
    start = time.perf_counter()
    logits = model.forward(pool, [Entry(s, p) for s, p in zip(slots, prompts)])
    tokens = [[int(t)] for t in torch.stack(logits).argmax(-1).tolist()]
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n_new - 1):
        logits = model.forward(pool, [Entry(s, (t[-1],)) for s, t in zip(slots, tokens)])
        for t, new in zip(tokens, torch.stack(logits).argmax(-1).tolist()):
            t.append(int(new))
    return prefill, time.perf_counter() - start, tokens


def bench(path: Path, device: str, batch: int, prompt_len: int, n_new: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    prompts = [tuple(int(t) for t in rng.integers(0, 500, prompt_len)) for _ in range(batch)]
    row: dict = {"model": path.name, "device": device, "batch": batch, "prompt": prompt_len, "new": n_new}
    tokens = {}
    for fused in (True, False):
        kind = "fused" if fused else "unfused"
        model = HybridModel(str(path), fused=fused, device=device)
        start = time.perf_counter()
        _run(model, prompts, 2)  # builds (and caches) the graphs of both compositions
        row[f"{kind}_build_s"] = time.perf_counter() - start
        runs = [_run(model, prompts, n_new) for _ in range(repeats)]
        prefill = min(r[0] for r in runs)
        decode = min(r[1] for r in runs)
        tokens[kind] = runs[0][2]
        row[f"{kind}_prefill_tok_s"] = batch * prompt_len / prefill
        row[f"{kind}_decode_tok_s"] = batch * (n_new - 1) / decode
        row[f"{kind}_nodes"] = model.stats.fused_nodes if fused else max(model.stats.unfused_nodes.values())
    row["same_tokens"] = tokens["fused"] == tokens["unfused"]
    for phase in ("prefill", "decode"):
        row[f"{phase}_speedup"] = row[f"fused_{phase}_tok_s"] / row[f"unfused_{phase}_tok_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_models(Path(tmp), variants=("f32",)):
            for b in args.batch:
                rows.append(bench(path, args.device, b, args.prompt, args.new, args.repeats))
                r = rows[-1]
                print(f"{r['model']:24s} B={b}: prefill fused {r['fused_prefill_tok_s']:8.1f} vs unfused "
                      f"{r['unfused_prefill_tok_s']:8.1f} tok/s ({r['prefill_speedup']:.2f}x); decode fused "
                      f"{r['fused_decode_tok_s']:7.1f} vs unfused {r['unfused_decode_tok_s']:7.1f} tok/s "
                      f"({r['decode_speedup']:.2f}x); nodes {r['fused_nodes']} vs {r['unfused_nodes']}; "
                      f"same tokens {r['same_tokens']}", flush=True)
    out = Path(args.out) / f"bench_generate_{args.device.split(':')[0]}.json"
    write_text(out, json.dumps({"device": name, "rows": rows}, indent=1))
    print(f"device: {name}; wrote {out}")


if __name__ == "__main__":
    main()
