"""Peak memory and wall time of ``gdnc logits`` over long token sequences.

Each length T runs ``python -m gdnc logits MODEL --tokens <T random ids>`` in its own process,
which reports its peak resident set (``ru_maxrss``) as it exits; the wall time includes the
start (imports, graph build). A run that fails (out of memory) is reported with its last line.
Usage: PYTHONPATH=. python3 benchmarks/long_context.py [MODEL] [T ...] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import resource, runpy, sys
try:
    runpy.run_module("gdnc", run_name="__main__")
finally:
    print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def measure(model: str, length: int, device: str, out: Path) -> dict:
    """One ``gdnc logits`` process over ``length`` random tokens: seconds, peak RSS, status."""
    ids = np.random.default_rng(length).integers(0, 384, length)
    args = ["gdnc", "logits", model, "--tokens", " ".join(map(str, ids)), "-o", str(out), "-q",
            "--device", device]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = {args!r}\n{CHILD}"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    rss = [int(line.split()[1]) for line in lines if line.startswith("maxrss_kib ")]
    other = [line for line in lines if not line.startswith("maxrss_kib ")]
    return {"T": length, "seconds": round(seconds, 2), "peak_rss_mib": rss[0] // 1024 if rss else None,
            "exit": proc.returncode, "last_line": other[-1][:200] if other else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="examples/tiny-qwen35-f16.gguf")
    parser.add_argument("lengths", nargs="*", type=int, default=[2048, 8192, 20480])
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for length in opts.lengths:
            print(json.dumps(measure(opts.model, length, opts.device, Path(tmp) / "logits.npy")), flush=True)


if __name__ == "__main__":
    main()
