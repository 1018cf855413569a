"""Export ONE decode step of a ``transformers`` Qwen3.5 model as ONNX, states in and out.

The graph, its inputs and outputs: ``corpus/decode_onnx.py``. Usage:
``python examples/export_decode_onnx.py --checkpoint DIR --out FILE.onnx``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/
from corpus.decode_onnx import export_decode_step, load_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="HF checkpoint folder (config.json, "
                   "model.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    args = p.parse_args()
    start = time.perf_counter()
    path = export_decode_step(load_checkpoint(args.checkpoint), args.out)
    print(f"{path} {path.stat().st_size} bytes, exported in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
