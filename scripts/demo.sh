#!/usr/bin/env bash
# Set everything up, then run the main job on the bundled examples: inspect the unfused
# HF export, convert it (one fused node), compare fused against unfused outputs; then
# generate text from the example GGUF models and compare their fused and unfused graphs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=examples/hf_recurrent_gated_delta_rule_t16.onnx
mkdir -p out
.venv/bin/gdnc inspect "$MODEL"
.venv/bin/gdnc convert "$MODEL" -o out/fused.onnx --report out/report.json
.venv/bin/gdnc compare "$MODEL"
.venv/bin/gdnc compare "$MODEL" --target ort
# GGUF: tiny random-weight hybrids in llama.cpp's layout (the text is noise: random weights)
.venv/bin/python examples/make_gguf_models.py --out out/models
.venv/bin/gdnc run out/models/qwen35-tiny-f32.gguf -p "The for statement" -p "A class" -p "import os" -n 16
.venv/bin/gdnc compare out/models/qwen35moe-tiny-q8_0.gguf
