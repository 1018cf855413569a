"""Render the pictures the README and docs/ link to, from the bundled trained model.

Terminal screenshots are the real commands' output (colours, tables) saved as SVG by rich;
the layer drawings come from ``gdnc inspect --draw`` and the benchmark figure from
``gdnc bench --plot``. Usage: ``python docs/make_pictures.py [--skip-bench]``; writes docs/img/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
GGUF = "examples/tiny-qwen35-f16.gguf"
DECODE = "examples/tiny-qwen35-decode.onnx"
WIDTH = 104
SCREENSHOTS = {
    "run": ["run", GGUF, "-p", "The for statement", "-p", "A class definition", "-p", "The import statement",
            "-n", "40"],
    "convert": ["convert", DECODE, "-o", "out/tiny-qwen35-decode-fused.onnx"],
    "compare": ["compare", GGUF, "--eval", "examples/tiny-qwen35/heldout.txt", "--hf", "examples/tiny-qwen35"],
}


def gdnc(*args: str) -> subprocess.CompletedProcess:
    """``gdnc ARGS`` with colours but no animation, as wide as the screenshots."""
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0", "COLUMNS": str(WIDTH)}
    proc = subprocess.run([sys.executable, "-m", "gdnc", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"gdnc {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def screenshot(name: str, args: list[str]) -> Path:
    """docs/img/<name>.svg: the command line and what it printed (stdout, then stderr)."""
    proc = gdnc(*args)
    path = IMG / f"{name}.svg"
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=WIDTH, force_terminal=True, file=sink)
        console.print(Text(f"$ gdnc {' '.join(args)}", style="bold"))
        console.print(Text.from_ansi(proc.stdout.rstrip("\n")))
        if proc.stderr.strip():
            console.print(Text.from_ansi(proc.stderr.rstrip("\n")))
        console.save_svg(str(path), title=f"gdnc {args[0]}")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-bench", action="store_true", help="keep the committed benchmark figure")
    args = p.parse_args()
    IMG.mkdir(parents=True, exist_ok=True)
    (ROOT / "out").mkdir(exist_ok=True)
    for name, command in SCREENSHOTS.items():
        print(screenshot(name, command))
    gdnc("inspect", GGUF, "--draw", str(IMG / "before_after_gguf.svg"), "-q")
    gdnc("inspect", "examples/hf_recurrent_gated_delta_rule_t16.onnx", "--draw",
         str(IMG / "before_after_onnx.svg"), "-q")
    print(IMG / "before_after_gguf.svg", IMG / "before_after_onnx.svg")
    if not args.skip_bench:
        gdnc("bench", GGUF, "--plot", str(IMG / "bench_cpu.png"), "-q")
        print(IMG / "bench_cpu.png")


if __name__ == "__main__":
    main()
