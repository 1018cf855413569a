"""End to end on CPU, gdnc vs llama.cpp, side by side: prefill-512, decode-64 of one sequence,
decode-64 of four sequences together (tokens/s), on real-size GGUF files.

Both sides run the same three tests in fresh child processes, in interleaved rounds (gdnc,
llama.cpp, gdnc, ...), ``THREADS`` threads each, after one untimed warm-up round inside each
child:

- gdnc: ``gdnc bench FILE --e2e --json`` from ``.venv`` (``gdnc.bench.end_to_end``: the fused
  graph compiled, greedy argmax read back every step);
- llama.cpp: llama-cpp-python from ``.bench-venv`` (``bash benchmarks/peer_env.sh``), this file
  run as its child (``--llama-child``) through llama.cpp's own C API: a context of ``n_seq_max``
  4, ``n_batch`` 512; prefill = one ``llama_decode`` of the 512-token batch (logits of the last
  token); decode = 64 ``llama_decode`` calls of one token (its logits); 4 sequences = 64 calls of
  a batch of four tokens, one per sequence. The memory is cleared before each test.

Figures are medians over rounds; ratios gdnc / llama.cpp. The JSON goes to ``--out`` and a
markdown table to stdout. Usage: ``.venv/bin/python benchmarks/e2e.py [--models
135m:f16,135m:q8_0] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "real_size"
GDNC = ROOT / ".venv" / "bin" / "gdnc"
PEER_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
THREADS, PROMPT, DECODE, SEQS = 2, 512, 64, 4
METRICS = ("prefill_tok_s", "decode_tok_s", "batch_decode_tok_s")
sys.path.insert(0, str(ROOT))  # corpus/ (imported where used: the llama.cpp child has no gdnc)


def llama_child(path: str, rounds: int) -> None:
    """The llama.cpp side (in ``.bench-venv``): one JSON line of medians."""
    import llama_cpp as L

    L.llama_backend_init()
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = SEQS * 2 * PROMPT, PROMPT, PROMPT  # per sequence 2 x 512
    params.n_seq_max, params.n_threads, params.n_threads_batch = SEQS, THREADS, THREADS
    ctx = L.llama_init_from_model(model, params)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    batch = L.llama_batch_init(PROMPT, 0, SEQS)

    def decode(tokens: list[tuple[int, int, int]], logits_last_only: bool) -> None:
        """One llama_decode of (token, position, sequence) entries."""
        batch.n_tokens = len(tokens)
        for i, (tok, pos, seq) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = (i == len(tokens) - 1) if logits_last_only else True
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def clear() -> None:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)

    def timed(fn) -> float:
        clear()
        start = time.perf_counter()
        fn()
        L.llama_synchronize(ctx)
        return time.perf_counter() - start

    prompt = [(1 + (7 * i) % (n_vocab - 1), i, 0) for i in range(PROMPT)]
    rates: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in range(rounds + 1):
        prefill = timed(lambda: decode(prompt, True))
        one = timed(lambda: [decode([(1 + s, s, 0)], False) for s in range(DECODE)])
        four = timed(lambda: [decode([(1 + s + q, s, q) for q in range(SEQS)], False) for s in range(DECODE)])
        if r:  # round 0 warms up
            rates["prefill_tok_s"].append(PROMPT / prefill)
            rates["decode_tok_s"].append(DECODE / one)
            rates["batch_decode_tok_s"].append(SEQS * DECODE / four)
    L.llama_batch_free(batch)
    print(json.dumps({m: statistics.median(v) for m, v in rates.items()}))


def _run(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "GDNC_CACHE_DIR": str(CACHE / "gdnc-cache")})
    if done.returncode:
        raise SystemExit(f"{cmd[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    text = done.stdout.strip()
    return json.loads(text if text.startswith("{\n") else text.splitlines()[-1])  # gdnc's is indented


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="135m:f16,135m:q8_0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", type=int, default=2, help="timed rounds inside each child")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_e2e.json"))
    ap.add_argument("--llama-child", nargs=2, metavar=("PATH", "ROUNDS"))
    args = ap.parse_args()
    if args.llama_child:
        llama_child(args.llama_child[0], int(args.llama_child[1]))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_size import ensure_model  # the same files as the real-size benchmark

    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS},
               "date": time.strftime("%Y-%m-%d"), "models": {}}
    for spec in args.models.split(","):
        preset, qtype = spec.split(":")
        path = ensure_model(preset, qtype)
        sides: dict[str, list[dict]] = {"gdnc": [], "llama.cpp": []}
        for _ in range(args.rounds):
            sides["gdnc"].append(_run([str(GDNC), "bench", str(path), "--e2e", "--json", "--threads",
                                       str(THREADS), "--rounds", str(args.inner)]))
            sides["llama.cpp"].append(_run([str(PEER_PYTHON), __file__, "--llama-child", str(path),
                                            str(args.inner)]))
        medians = {side: {m: statistics.median(run[m] for run in runs) for m in METRICS}
                   for side, runs in sides.items()}
        ratio = {m: medians["gdnc"][m] / medians["llama.cpp"][m] for m in METRICS}
        results["models"][spec] = {"file_bytes": path.stat().st_size, "rounds": args.rounds,
                                   "medians": medians, "runs": sides, "ratio": ratio}
        Path(args.out).write_text(json.dumps(results, indent=1))
    print("| file | test | gdnc tok/s | llama.cpp tok/s | gdnc / llama.cpp |\n|---|---|---|---|---|")
    for spec, res in results["models"].items():
        labels = (f"prefill {PROMPT}", f"decode {DECODE}", f"decode {DECODE} x {SEQS} seqs")
        for m, label in zip(METRICS, labels):
            gdnc, peer = res["medians"]["gdnc"][m], res["medians"]["llama.cpp"][m]
            print(f"| {spec} | {label} | {gdnc:.1f} | {peer:.1f} | {res['ratio'][m]:.2f} |")


if __name__ == "__main__":
    main()
