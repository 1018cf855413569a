"""Real-size random models on CPU, gdnc vs llama.cpp: peak RSS, time to first token, decode tok/s.

For each ``PRESET:TYPE`` (``corpus/sized_gguf.py``; the file is written once into
``build/real_size/`` if missing), both sides run as fresh processes in interleaved rounds
(gdnc, llama.cpp, gdnc, llama.cpp, ...) after one untimed warm-up each (gdnc's: its ``-n 1``
run; it fills gdnc's graph cache in ``build/real_size/gdnc-cache``), with ``THREADS`` threads,
on the same ~32-token English prompt, greedy, for a first token then ``--decode`` more:

- gdnc: the real CLI from ``.venv``, ``gdnc run FILE -p PROMPT -n N -t 2 -c CTX --json
  --ignore-eos`` (``CTX``: the peer's context, so both size their caches alike),
  twice a round (its JSON has no per-token times): ``-n 1`` gives the time to first token (the
  arrival of its first JSON line, written when generation ends, measured from just before the
  spawn; the interpreter's exit is not counted) and ``-n 1+N`` the decode rate, ``N /
  (seconds(1+N) - seconds(1))`` from the two runs' own generation timings (model loading does
  not enter); peak RSS is the larger of the two;
- llama.cpp: llama-cpp-python from ``.bench-venv`` (``bash benchmarks/peer_env.sh``), this file
  run as its child (``--llama-child``): ``Llama(n_ctx=512, n_threads=2, n_batch=512)``,
  ``create_completion(stream=True, temperature=0)``; the first streamed chunk's ``time.time()``
  gives the time to first token; a logits processor, called as each token's logits are ready,
  times the N decode steps (the decode rate) and bans the end-of-generation tokens (so both
  sides make 1+N tokens).

Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``; file pages mapped and touched count).
A child gets an address-space limit (``--mem-limit-gb``) and a timeout; a failure is recorded
(with what the round measured before it) and that side skips the model's later rounds.
Medians over rounds, the ratios gdnc / llama.cpp, file sizes and the machine go to ``--out``
(JSON, rewritten after each model) and a markdown table to stdout.
Usage: ``.venv/bin/python benchmarks/real_size.py [--models 0.5b:f16,4b:q4_k] [--rounds 3]
[--decode 16] [--peer llama|none] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "real_size"
GDNC = ROOT / ".venv" / "bin" / "gdnc"
PEER_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
DEFAULT_MODELS = "0.5b:f16,0.5b:q8_0,4b:q4_k"
PROMPT = ("The for statement is used to iterate over the elements of a sequence, such as a string, "
          "tuple or list.")
THREADS = 2
CTX = 512  # tokens of context both sides allocate
SIDES = ("gdnc", "llama.cpp")
METRICS = ("rss_kib", "ttft_s", "decode_tok_s")
BEST = {"ttft_s": min, "decode_tok_s": max}
ERROR_WORDS = re.compile(r"error|failed|what\(\)|killed|exception", re.IGNORECASE)
sys.path.insert(0, str(ROOT))  # corpus/ (imported where used: the llama.cpp child has no gdnc)


@dataclass
class Proc:
    """One finished child: exit code (None: killed at the timeout), wall seconds, CPU seconds
    (user + system: about ``THREADS`` x wall when nothing else competes for the cores), peak RSS
    (KiB), its stdout lines with their arrival times (``time.time()``), its stderr's tail."""

    rc: int | None
    wall_s: float
    cpu_s: float
    rss_kib: int
    lines: list[tuple[float, str]] = field(default_factory=list)
    stderr: str = ""

    def json_lines(self) -> list[tuple[float, dict]]:
        """The stdout lines that are JSON objects, with their arrival times."""
        out = []
        for t, line in self.lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append((t, obj))
        return out

    def failure(self) -> str | None:
        """Why this run failed (timeout, exit code or signal, stderr's last line that says an
        error, else its last line), or None."""
        if self.rc == 0:
            return None
        lines = [line for line in self.stderr.splitlines() if line.strip()] or [""]
        said = next((line for line in reversed(lines) if ERROR_WORDS.search(line)), lines[-1])
        how = ("killed at the timeout" if self.rc is None else f"exit {self.rc}" if self.rc > 0
               else signal.Signals(-self.rc).name)
        return f"{how}: {said.strip()[:300]}" if said.strip() else how


def spawn(cmd: list[str], env: dict[str, str], timeout: float, mem_limit: int) -> tuple[float, Proc]:
    """Run ``cmd`` to its end; (the spawn time, just before Popen, by ``time.time()``; the
    :class:`Proc`). Its address space is capped at ``mem_limit`` bytes; past ``timeout``
    seconds it is killed."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryFile() as err:
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, preexec_fn=cap)

        def read() -> None:
            for raw in p.stdout:
                lines.append((time.time(), raw.decode("utf-8", "replace").rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.time() - t0
        timed_out = not killer.is_alive()
        killer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        p.stdout.close()
        err.seek(0)
        tail = err.read()[-4000:].decode("utf-8", "replace")
    cpu = usage.ru_utime + usage.ru_stime
    return t0, Proc(None if timed_out else p.returncode, wall, cpu, usage.ru_maxrss, lines, tail)


def child_env() -> dict[str, str]:
    """The children's environment: unbuffered Python output, ``THREADS`` OpenMP threads, gdnc's
    graph cache in the benchmark's folder, no gdb backtrace from a failing ggml."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(THREADS),
            "GDNC_CACHE_DIR": str(CACHE / "gdnc-cache"), "GGML_NO_BACKTRACE": "1"}


def gdnc_run(path: Path, n: int, timeout: float, mem_limit: int) -> dict:
    """``gdnc run PATH -n n --json``: ttft_s (its first JSON line's arrival), seconds (its own
    generation timing), rss_kib, wall_s, its sequence's JSON; or {"error": ...}."""
    cmd = [str(GDNC), "run", str(path), "-p", PROMPT, "-n", str(n), "-t", str(THREADS),
           "-c", str(CTX), "--json", "--ignore-eos"]
    t0, proc = spawn(cmd, child_env(), timeout, mem_limit)
    objs = proc.json_lines()
    if proc.failure() or len(objs) < 2 or "timing" not in objs[-1][1]:
        return {"error": f"gdnc -n {n}: {proc.failure() or 'no JSON timing'}",
                "rss_kib_at_failure": proc.rss_kib}
    return {"ttft_s": objs[0][0] - t0, "seconds": objs[-1][1]["timing"]["seconds"],
            "rss_kib": proc.rss_kib, "wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "seq": objs[0][1]}


def gdnc_round(path: Path, decode: int, timeout: float, mem_limit: int) -> dict:
    """One gdnc measurement: ``-n 1`` (ttft_s, rss_kib, prompt_tokens, generated_ids), then,
    if ``decode``, ``-n 1+decode`` (decode_tok_s; rss_kib the larger; generated_ids its). A
    failure keeps what the runs before it measured, with "error"."""
    one = gdnc_run(path, 1, timeout, mem_limit)
    if "error" in one:
        return one
    out = {"ttft_s": one["ttft_s"], "rss_kib": one["rss_kib"], "wall_s": one["wall_s"], "cpu_s": one["cpu_s"],
           "prompt_tokens": len(one["seq"]["prompt_ids"]), "generated_ids": one["seq"]["generated_ids"]}
    if not decode:
        return out
    full = gdnc_run(path, 1 + decode, timeout, mem_limit)
    if "error" in full:
        return out | full
    made = len(full["seq"]["generated_ids"]) - len(one["seq"]["generated_ids"])
    return out | {"decode_tok_s": made / (full["seconds"] - one["seconds"]),
                  "rss_kib": max(one["rss_kib"], full["rss_kib"]), "wall_s": one["wall_s"] + full["wall_s"],
                  "cpu_s": one["cpu_s"] + full["cpu_s"],
                  "generated_ids": full["seq"]["generated_ids"]}


def llama_round(path: Path, decode: int, timeout: float, mem_limit: int) -> dict:
    """One llama.cpp measurement (this file as the child under ``PEER_PYTHON``): ttft_s,
    decode_tok_s, rss_kib, wall_s, prompt_tokens, generated_ids (but the last); or {"error": ...}."""
    cmd = [str(PEER_PYTHON), str(Path(__file__).resolve()), "--llama-child", str(path),
           "--decode", str(decode)]
    t0, proc = spawn(cmd, child_env(), timeout, mem_limit)
    objs = [o for _, o in proc.json_lines()]
    if proc.failure() or not objs or "steps" not in objs[-1]:
        return {"error": f"llama.cpp: {proc.failure() or 'no result line'}",
                "rss_kib_at_failure": proc.rss_kib}
    r = objs[-1]
    steps = r["steps"]
    return {"ttft_s": r["first_chunk"] - t0, "first_logits_s": steps[0] - t0,
            "decode_tok_s": (len(steps) - 1) / (steps[-1] - steps[0]), "rss_kib": proc.rss_kib,
            "wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "prompt_tokens": r["prompt_tokens"],
            "generated_ids": r["generated_ids"]}


def llama_child(path: str, decode: int) -> None:
    """The llama.cpp side, run under ``PEER_PYTHON``: prints one JSON line with the first
    streamed chunk's ``time.time()``, the time of each token's logits (``steps``, from a logits
    processor that also bans the end-of-generation tokens), the prompt's token count and the
    generated ids but the last (the processor sees a token when the next one is computed)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=CTX, n_threads=THREADS, n_threads_batch=THREADS,
                          n_batch=512, verbose=False)
    banned = llm.tokenize(b"<|endoftext|><|im_start|><|im_end|>", add_bos=False, special=True)
    n_prompt = len(llm.tokenize(PROMPT.encode(), add_bos=False))
    steps: list[float] = []
    seen: list[int] = []

    def step(ids, scores):  # once per generated token, before it is sampled
        steps.append(time.time())
        seen[:] = [int(t) for t in ids[n_prompt:]]
        scores[banned] = -math.inf
        return scores

    first = None
    for _ in llm.create_completion(PROMPT, max_tokens=1 + decode, temperature=0.0, repeat_penalty=1.0,
                                   stream=True, logits_processor=llama_cpp.LogitsProcessorList([step])):
        first = first or time.time()
    print(json.dumps({"first_chunk": first, "steps": steps, "prompt_tokens": n_prompt,
                      "generated_ids": seen}), flush=True)


def ensure_model(preset: str, variant: str) -> Path:
    """``build/real_size/<preset>-<variant>.gguf``, written by corpus.sized_gguf if missing."""
    from corpus.sized_gguf import PRESETS, write_sized

    path = CACHE / f"{preset}-{variant}.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_sized(path, PRESETS[preset], variant)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return path


def values(rounds: list[dict], key: str) -> list:
    """``key`` of the rounds that measured it."""
    return [r[key] for r in rounds if key in r]


def summary(rounds: list[dict]) -> dict:
    """Medians of ``METRICS`` over the rounds (None where none measured one), the best time to
    first token and decode rate (on a noisy machine, the least disturbed round), the first error."""
    out = {k: statistics.median(v) if (v := values(rounds, k)) else None for k in METRICS}
    for key, best in BEST.items():
        out[f"best_{key}"] = best(v) if (v := values(rounds, key)) else None
    out["error"] = next((r["error"] for r in rounds if "error" in r), None)
    return out


def same_tokens(runs: dict[str, list[dict]]) -> str | None:
    """``k/n``: the first ``k`` of the ``n`` tokens that both sides' longest runs generated agree
    (greedy on the same file: they agree until two logits nearly tie); None without both."""
    ids = [max(values(rs, "generated_ids"), key=len, default=None) for rs in runs.values()]
    if len(ids) != 2 or None in ids:
        return None
    n = min(map(len, ids))
    return f"{next((i for i in range(n) if ids[0][i] != ids[1][i]), n)}/{n}"


def measure(side: str, path: Path, args: argparse.Namespace, warmup: bool) -> dict:
    """One round of ``side`` on ``path`` with the 1-minute load average before it (the noise of
    a shared machine); gdnc's warm-up is its ``-n 1`` run alone."""
    limit = int(args.mem_limit_gb * 2**30)
    load = os.getloadavg()[0]
    if side == "gdnc":
        return gdnc_round(path, 0 if warmup else args.decode, args.timeout, limit) | {"load_1m": load}
    return llama_round(path, args.decode, args.timeout, limit) | {"load_1m": load}


def bench_model(preset: str, variant: str, args: argparse.Namespace) -> dict:
    """A warm-up (untimed: gdnc's graph cache, the page cache), then ``args.rounds`` interleaved
    rounds; a side that fails skips the later rounds of this model."""
    from corpus.sized_gguf import PRESETS, n_params

    path = ensure_model(preset, variant)
    tree = gdnc_tree()
    sides = ["gdnc"] + (["llama.cpp"] if args.peer == "llama" else [])
    runs: dict[str, list[dict]] = {s: [] for s in sides}  # the warm-up, then the rounds
    for i in range(args.rounds + 1):
        for side in sides:
            if any("error" in r for r in runs[side]):
                continue
            print(f"{preset}:{variant} {side} {'warm-up' if i == 0 else f'round {i}'}", file=sys.stderr)
            runs[side].append(measure(side, path, args, warmup=i == 0))
    out = {"model": f"{preset}:{variant}", "file": str(path.relative_to(ROOT)),
           "file_bytes": path.stat().st_size, "params": n_params(PRESETS[preset]),
           "warmup": {s: r[0] for s, r in runs.items()}, "rounds": {s: r[1:] for s, r in runs.items()},
           "gdnc_tree": tree, "gdnc_changed_during": gdnc_tree() != tree}
    for side in sides:
        out[side] = summary(runs[side])  # the warm-up's error too: the rounds did not run after it
        out[side] |= {k: v for k, v in summary(runs[side][1:]).items() if k != "error"}
    if args.peer == "llama":
        out["ratio_gdnc_over_llama"] = {
            k: out["gdnc"][k] / out["llama.cpp"][k] if out["gdnc"][k] and out["llama.cpp"][k] else None
            for k in METRICS}
        out["same_tokens"] = same_tokens(runs)
    return out


def gdnc_tree() -> str:
    """A digest of gdnc's source as the children import it (the working tree, edits included)."""
    digest = hashlib.sha256()
    for f in sorted((ROOT / "gdnc").rglob("*.py")):
        digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def machine() -> dict:
    """The CPU, its core count, memory, load, and gdnc's commit and source digest."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": THREADS, "mem_gib": round(mem / 2**20, 1),
            "kernel": platform.release(), "gdnc_git": git, "gdnc_tree": gdnc_tree(),
            "loadavg": os.getloadavg()}


def peer_version() -> str | None:
    """llama-cpp-python's version in ``.bench-venv``, or None when it does not import."""
    done = subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _cell(m: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    """``m[key]`` (scaled, formatted; "—" if None), then its best in brackets if ``m`` has one."""
    cell = "—" if m[key] is None else format(m[key] * scale, fmt)
    best = m.get(f"best_{key}")
    return cell if best is None else f"{cell} ({best:{fmt}})"


def table(results: list[dict]) -> str:
    """The markdown table: medians (best round) of both sides, and the ratios of the medians
    (gdnc / llama.cpp) with how many generated tokens agree."""
    head = ("| model | file GiB | side | peak RSS MiB | TTFT s (best) | decode tok/s (best) | note |\n"
            "|---|---:|---|---:|---:|---:|---|\n")
    rows = []
    for r in results:
        for side in (s for s in SIDES if s in r):
            m = r[side]
            notes = [m["error"] or "", "gdnc's source changed meanwhile" if r["gdnc_changed_during"] else ""]
            rows.append(f"| {r['model']} | {r['file_bytes'] / 2**30:.2f} | {side} | "
                        f"{_cell(m, 'rss_kib', '.0f', 1 / 1024)} | {_cell(m, 'ttft_s', '.2f')} | "
                        f"{_cell(m, 'decode_tok_s', '.2f')} | {'; '.join(n for n in notes if n)} |")
        if "ratio_gdnc_over_llama" in r:
            m = r["ratio_gdnc_over_llama"]
            rows.append(f"| {r['model']} | | gdnc / llama.cpp | {_cell(m, 'rss_kib', '.2f')} | "
                        f"{_cell(m, 'ttft_s', '.2f')} | {_cell(m, 'decode_tok_s', '.2f')} | "
                        f"same tokens: {r['same_tokens'] or '—'} |")
    return head + "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="PRESET:TYPE,... (corpus/sized_gguf.py)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--decode", type=int, default=16, help="tokens after the first")
    p.add_argument("--peer", choices=("llama", "none"), default="llama")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    p.add_argument("--mem-limit-gb", type=float, default=16.0, help="a child's address-space limit")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_real_size.json")
    p.add_argument("--llama-child", metavar="GGUF", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.llama_child:
        llama_child(args.llama_child, args.decode)
        return
    models = parse_models(p, args.models)
    peer = peer_version() if args.peer == "llama" else None
    if args.peer == "llama" and peer is None:
        sys.exit(f"llama-cpp-python does not import from {PEER_PYTHON}: run bash benchmarks/peer_env.sh "
                 "(or --peer none)")
    report = {"machine": machine(), "peer": f"llama-cpp-python {peer}" if peer else None, "prompt": PROMPT,
              "threads": THREADS, "decode": args.decode, "rounds": args.rounds, "results": []}
    for preset, variant in models:  # the file holds every model measured so far
        report["results"].append(bench_model(preset, variant, args))
        report["machine_at_end"] = machine()
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    m, end = report["machine"], report["machine_at_end"]
    print(f"{m['cpu']}, {m['cpus']} CPUs, {THREADS} threads; gdnc {m['gdnc_git']} (tree {m['gdnc_tree']}); "
          f"peer {report['peer']}; medians of {args.rounds} rounds, 1 + {args.decode} tokens; "
          f"load {m['loadavg'][0]:.1f} at the start, {end['loadavg'][0]:.1f} at the end\n")
    print(table(report["results"]))


def parse_models(p: argparse.ArgumentParser, text: str) -> list[tuple[str, str]]:
    """``PRESET:TYPE,...`` as pairs; an argparse error names a bad one."""
    from corpus.sized_gguf import PRESETS, TYPES

    pairs = [tuple(spec.split(":", 1)) for spec in text.split(",")]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in PRESETS or pair[1] not in TYPES:
            p.error(f"--models: {':'.join(pair)!r} is not PRESET:TYPE with PRESET in {', '.join(PRESETS)} "
                    f"and TYPE in {', '.join(TYPES)}")
    return pairs


if __name__ == "__main__":
    main()
