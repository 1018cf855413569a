"""Conversion time of a 48-layer-like graph: N exported HF delta-net layers of T tokens each.

Usage: python benchmarks/convert_speed.py [--layers 36] [--tokens 16] [--exporter dynamo]
Prints nodes before/after, chains fused and seconds for load, fuse and save (one run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdnc.convert import convert_model  # noqa: E402
from gdnc.frontends.onnx_model import load_onnx  # noqa: E402
from gdnc.ir.to_onnx import save_onnx  # noqa: E402
from tests.models.zoo import export_many_layers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--exporter", default="dynamo")
    args = ap.parse_args()
    t0 = time.perf_counter()
    zoo = export_many_layers(n_layers=args.layers, T=args.tokens, exporter=args.exporter)
    t1 = time.perf_counter()
    model = load_onnx(zoo.path)
    t2 = time.perf_counter()
    report = convert_model(model, target="native")
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_onnx(model, Path(tmp) / "fused.onnx")
    t4 = time.perf_counter()
    print(f"{args.layers} layers x T={args.tokens} ({args.exporter} export, {t1 - t0:.1f} s): "
          f"{report.nodes_before} -> {report.nodes_after} nodes, {len(report.chains)} chains fused; "
          f"load {t2 - t1:.2f} s, convert {t3 - t2:.2f} s, save {t4 - t3:.2f} s")


if __name__ == "__main__":
    main()
