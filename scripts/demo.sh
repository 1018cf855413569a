#!/usr/bin/env bash
# Set everything up, then run the main job on the bundled example: inspect the unfused
# HF export, convert it (one fused node), and compare fused against unfused outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=examples/hf_recurrent_gated_delta_rule_t16.onnx
mkdir -p out
.venv/bin/gdnc inspect "$MODEL"
.venv/bin/gdnc convert "$MODEL" -o out/fused.onnx --report out/report.json
.venv/bin/gdnc compare "$MODEL"
.venv/bin/gdnc compare "$MODEL" --target ort
