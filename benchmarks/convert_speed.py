"""Conversion time of a 48-layer-like graph: N chained HF delta-net layers of T tokens each.

The graph comes from the corpus zoo's ``export_many_layers`` (real torch.onnx.export of the HF
per-token loop, one layer exported and chained N times; a single export of 36 unrolled layers
takes over ten minutes, all of it in the exporter).

Usage: python benchmarks/convert_speed.py [--layers 36] [--tokens 16]
Prints nodes before/after, chains fused and seconds to load, convert and save (one run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/

from corpus.zoo import export_many_layers  # noqa: E402
from gdnc.frontends.onnx_model import load_onnx  # noqa: E402
from gdnc.ir.to_onnx import save_onnx  # noqa: E402
from gdnc.passes.convert import convert_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    zoo = export_many_layers(n_layers=args.layers, T=args.tokens)
    t0 = time.perf_counter()
    model = load_onnx(zoo.path)
    t1 = time.perf_counter()
    report = convert_model(model, target="native")
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_onnx(model, Path(tmp) / "fused.onnx")
    t3 = time.perf_counter()
    print(f"{args.layers} layers x T={args.tokens}: {report.nodes_before} -> {report.nodes_after} nodes, "
          f"{len(report.chains)} chains fused; load {t1 - t0:.2f} s, convert {t2 - t1:.2f} s, "
          f"save {t3 - t2:.2f} s")


if __name__ == "__main__":
    main()
