"""CPU GatedDeltaNet benchmark: gdnc's CPU kernels vs onnxruntime, side by side, 2 threads.

HV = H = 32 heads, K = V = 128, fp32 state in the "kv" layout. Competitors, all on this
machine in one run, each timed in its own block of calls right after the others, reported as
the median (and min) over the rounds:

- ``gdnc-rec`` / ``gdnc-chunk``: ``gdnc.gated_delta_net(backend="cpu")`` with
  ``algorithm="recurrent"`` / ``"chunked"`` (the public pool form, validation included);
- ``gdnc-native``: ``backend="native", algorithm="recurrent"`` (the recurrence in C);
- ``ort-la``: onnxruntime's fused ``com.microsoft::LinearAttention`` (update_rule
  "gated_delta", scale 0 = 1/sqrt(dk), log decay), one-node model, CPU provider;
- ``ort-unfused``: HF's ``torch_recurrent_gated_delta_rule`` exported with the TorchScript
  exporter (one unrolled loop per T and B) and run by onnxruntime; prefill only up to T = 64
  (the export of longer unrolled loops takes minutes).

Onnxruntime runs with intra_op_num_threads = 2 and I/O bound to preallocated buffers (no
output copies). Decode rotates over enough independent states ("layers") that they do not
fit in the last-level cache, as in a real model; % of copy bandwidth counts the state bytes
read and written (2 x B x HV x K x V x 4) against a large torch tensor copy.

Usage: python benchmarks/bench_cpu.py [--rounds 15] [--quick]
Writes benchmarks/results_cpu.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/

from corpus.zoo import export_hf  # noqa: E402
from gdnc.atomic import write_text  # noqa: E402
from gdnc.bench.options import GdnShape  # noqa: E402
from gdnc.bench.peers import linear_attention_model, ort_session  # noqa: E402
from gdnc.bench.timing import copy_bandwidth, time_calls  # noqa: E402
from gdnc.lowering.gated_delta_net.api import gated_delta_net  # noqa: E402

THREADS = 2
HV, K, V = 32, 128, 128
SHAPE = GdnShape(HV, K, V)
LLC_BYTES = 32 << 20  # the decode rotation keeps 3x this many state bytes in flight
DECODE_BATCHES = (1, 2, 4, 8, 16, 32)
PREFILL_LENGTHS = (16, 64, 256, 1024)
UNFUSED_MAX_T = 64
BREAK_EVEN_LENGTHS = (8, 12, 16, 20, 24, 32, 48, 64, 96, 128)

Timer = Callable[[int], object]


def measure(fns: dict[str, Timer], rounds: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Time each competitor in its own block of warmup + rounds calls (interleaving single
    calls would let one runtime's spinning worker threads slow the next); fns[name](i) runs
    one call on rotation slot i. Milliseconds."""
    out = {}
    for name, fn in fns.items():
        t = time_calls(fn, rounds, warmup, sync=lambda: None)
        out[name] = {"median_ms": t.median_s * 1e3, "min_ms": t.min_s * 1e3}
    return out


def matmul_gflops(rounds: int) -> float:
    """GFLOP/s of a 1024^3 fp32 torch matmul: the machine's arithmetic ceiling."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    ms = measure({"mm": lambda i: torch.mm(a, b)}, rounds)["mm"]["median_ms"]
    return 2 * 1024**3 / ms / 1e6


class Problem:
    """``copies`` independent inputs and states of B sequences of T tokens (torch tensors
    and numpy views of the same memory)."""

    def __init__(self, B: int, T: int, copies: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.B, self.T, self.copies = B, T, copies
        self.cu = torch.arange(B + 1, dtype=torch.int64) * T
        self.sets = []
        for _ in range(copies):
            q = torch.randn(B * T, HV, K, generator=gen)
            k = torch.randn(B * T, HV, K, generator=gen) / math.sqrt(K)
            v = torch.randn(B * T, HV, V, generator=gen)
            g = -0.1 * torch.rand(B * T, HV, generator=gen)
            beta = torch.rand(B * T, HV, generator=gen)
            pool = 0.1 * torch.randn(B, HV, K, V, generator=gen)
            self.sets.append((q, k, v, g, beta, pool))

    def gdnc(self, algorithm: str, backend: str = "cpu") -> Timer:
        def run(i: int) -> None:
            q, k, v, g, beta, pool = self.sets[i % self.copies]
            gated_delta_net(q, k, v, g, beta, pool, self.cu, backend=backend, algorithm=algorithm)
        return run

    def ort(self, sess: ort.InferenceSession, names: list[str], bsht: bool) -> Timer:
        """names: the graph's (q, k, v, g, beta, state) inputs; bsht: [B, T, H, D] inputs and
        output (the HF export) instead of [B, T, H*D] (LinearAttention)."""
        B, T = self.B, self.T
        out_shapes = [[B, T, HV, V] if bsht else [B, T, HV * V], [B, HV, K, V]]
        bindings = []
        for q, k, v, g, beta, pool in self.sets:
            io = sess.io_binding()
            shaped = [x.view(B, T, HV, -1) if bsht else x.view(B, T, -1) for x in (q, k, v)]
            feeds = [*shaped, g.view(B, T, HV), beta.view(B, T, HV), pool]
            for name, x in zip(names, feeds):
                io.bind_cpu_input(name, np.ascontiguousarray(x.numpy()))
            for out, shape in zip(sess.get_outputs(), out_shapes):
                io.bind_ortvalue_output(
                    out.name, ort.OrtValue.ortvalue_from_numpy(np.empty(shape, np.float32)))
            bindings.append(io)

        def run(i: int) -> np.ndarray:
            io = bindings[i % len(bindings)]
            sess.run_with_iobinding(io)
            return io.get_outputs()[0].numpy()
        return run

    def agreement(self, ort_run: Timer, algorithm: str) -> float:
        """Relative L2 difference of gdnc's o and onnxruntime's on the first input set."""
        q, k, v, g, beta, pool = self.sets[0]
        want = torch.from_numpy(np.array(ort_run(0))).reshape(-1, HV, V)
        got = gated_delta_net(q, k, v, g, beta, pool.clone(), self.cu, backend="cpu",
                              algorithm=algorithm)
        return ((got - want).norm() / want.norm()).item()


def unfused_session(B: int, T: int) -> tuple[ort.InferenceSession, list[str]]:
    zoo = export_hf(T=T, exporter="torchscript", l2norm=False, B=B, H=HV, K=K, V=V,
                    with_initial_state=True)
    sess = ort_session(zoo.path, THREADS)
    return sess, [i.name for i in sess.get_inputs()]


def la_session(B: int, T: int) -> ort.InferenceSession:
    return ort_session(linear_attention_model(B, T, SHAPE), THREADS)


LA_INPUTS = ["query", "key", "value", "decay", "beta", "past_state"]


def decode(rounds: int, batches: tuple[int, ...], bandwidth: float) -> list[dict]:
    rows = []
    for B in batches:
        state_bytes = B * HV * K * V * 4
        copies = max(2, math.ceil(3 * LLC_BYTES / state_bytes))
        prob = Problem(B, 1, copies)
        unfused, names = unfused_session(B, 1)
        fns = {"gdnc-rec": prob.gdnc("recurrent"), "gdnc-native": prob.gdnc("recurrent", "native"),
               "ort-la": prob.ort(la_session(B, 1), LA_INPUTS, False),
               "ort-unfused": prob.ort(unfused, names, True)}
        err = prob.agreement(fns["ort-la"], "recurrent")
        res = measure(fns, rounds)
        ms = res["gdnc-rec"]["median_ms"]
        rows.append({"B": B, "layers_rotated": copies, "rel_diff_vs_ort_la": err, **res,
                     "gdnc_pct_copy_bw": 100 * 2 * state_bytes / ms / 1e6 / bandwidth,
                     "native_pct_copy_bw": 100 * 2 * state_bytes / res["gdnc-native"]["median_ms"]
                     / 1e6 / bandwidth,
                     "ort_la_pct_copy_bw": 100 * 2 * state_bytes / res["ort-la"]["median_ms"]
                     / 1e6 / bandwidth})
        print(f"decode B={B:<3d}" + "".join(f"  {n} {r['median_ms']:8.3f}" for n, r in res.items()),
              flush=True)
    return rows


def prefill(rounds: int, lengths: tuple[int, ...]) -> list[dict]:
    rows = []
    for T in lengths:
        prob = Problem(1, T, 1)
        fns = {"gdnc-rec": prob.gdnc("recurrent"), "gdnc-chunk": prob.gdnc("chunked"),
               "gdnc-native": prob.gdnc("recurrent", "native"),
               "ort-la": prob.ort(la_session(1, T), LA_INPUTS, False)}
        if T <= UNFUSED_MAX_T:
            unfused, names = unfused_session(1, T)
            fns["ort-unfused"] = prob.ort(unfused, names, True)
        err = max(prob.agreement(fns["ort-la"], a) for a in ("recurrent", "chunked"))
        res = measure(fns, max(3, rounds if T <= 256 else rounds // 3))
        rows.append({"T": T, "rel_diff_vs_ort_la": err, **res})
        print(f"prefill T={T:<5d}" + "".join(f"  {n} {r['median_ms']:8.3f}" for n, r in res.items()),
              flush=True)
    return rows


def break_even(rounds: int, lengths: tuple[int, ...]) -> dict:
    """Shortest T from which chunked is at least as fast as recurrent for every longer T
    measured (one sequence; compares the min over rounds, the figure least disturbed by
    other load on the machine)."""
    rows = []
    for T in lengths:
        prob = Problem(1, T, 1)
        res = measure({"gdnc-rec": prob.gdnc("recurrent"), "gdnc-chunk": prob.gdnc("chunked")},
                      rounds)
        rows.append({"T": T, **res})
        print(f"break-even T={T:<4d}  rec {res['gdnc-rec']['min_ms']:7.3f}"
              f"  chunk {res['gdnc-chunk']['min_ms']:7.3f} (min ms)", flush=True)
    chosen = lengths[-1]
    for row in reversed(rows):
        if row["gdnc-chunk"]["min_ms"] > row["gdnc-rec"]["min_ms"]:
            break
        chosen = row["T"]
    return {"rows": rows, "chunked_min_tokens": chosen}


def table(title: str, key: str, rows: list[dict], names: list[str], extra: str | None = None) -> str:
    head = f"| {key} | " + " | ".join(f"{n} ms" for n in names)
    head += " | speedup vs ort-la |" + (f" {extra} |" if extra else "")
    lines = [f"\n{title} (median ms over rounds; min in parentheses)", head,
             "|" + "---|" * (len(names) + 2 + bool(extra))]
    for row in rows:
        cells = [f"{row[n]['median_ms']:.3f} ({row[n]['min_ms']:.3f})" if n in row else "-"
                 for n in names]
        best = min(row[n]["median_ms"] for n in names if n.startswith("gdnc") and n in row)
        line = f"| {row[key]} | " + " | ".join(cells) + f" | {row['ort-la']['median_ms'] / best:.2f}x |"
        if extra:
            line += f" {row[extra]:.0f}% |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="fewer shapes, for a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    ort.set_default_logger_severity(3)
    batches = (1, 8) if args.quick else DECODE_BATCHES
    lengths = (16, 256) if args.quick else PREFILL_LENGTHS
    bandwidth = copy_bandwidth(torch.device("cpu"), args.rounds)
    print(f"copy bandwidth {bandwidth:.1f} GB/s", flush=True)
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS,
                    "copy_bandwidth_GBps": bandwidth,
                    "matmul_GFLOPs": matmul_gflops(args.rounds), "torch": torch.__version__,
                    "onnxruntime": ort.__version__, "loadavg_at_start": os.getloadavg()},
        "shape": {"HV": HV, "K": K, "V": V, "state": "fp32 kv"},
        "decode": decode(args.rounds, batches, bandwidth),
        "prefill": prefill(args.rounds, lengths),
        "break_even": break_even(args.rounds, (16, 64) if args.quick else BREAK_EVEN_LENGTHS),
    }
    print(table("Decode, T=1 per sequence", "B", results["decode"],
                ["gdnc-rec", "gdnc-native", "ort-la", "ort-unfused"], "native_pct_copy_bw"))
    print(table("Prefill, one sequence", "T", results["prefill"],
                ["gdnc-rec", "gdnc-chunk", "gdnc-native", "ort-la", "ort-unfused"]))
    print(f"\nbreak-even: chunked from T = {results['break_even']['chunked_min_tokens']}")
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    out = Path(__file__).with_name("results_cpu.json")
    write_text(out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
