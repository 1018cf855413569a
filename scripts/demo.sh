#!/usr/bin/env bash
# Set everything up, then run the main job on the bundled trained model (a 2M-parameter
# Qwen3.5 hybrid trained on Python's docs by examples/train_tiny.py): generate text for three
# prompts decoded together, convert the model (GGUF, and its ONNX decode step exported by
# torch.onnx.export) with the conversion report, and compare fused against unfused graphs:
# held-out perplexity of both and of the HF checkpoint the model came from.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GDNC=.venv/bin/gdnc
MODEL=examples/tiny-qwen35-f16.gguf
DECODE=examples/tiny-qwen35-decode.onnx
mkdir -p out
echo "== generate: three prompts decoded together (fused GatedDeltaNet, CPU)"
$GDNC run "$MODEL" -p "The for statement" -p "A class definition" -p "The import statement" -n 40
echo "== convert: the GGUF model as one fused ONNX graph, and the exported ONNX decode step"
$GDNC convert "$MODEL" -o out/tiny-qwen35-fused.onnx
$GDNC convert "$DECODE" -o out/tiny-qwen35-decode-fused.onnx --report out/report.json
echo "== compare: fused vs unfused graphs, held-out perplexity (and the HF model it came from)"
$GDNC compare "$MODEL" --eval examples/tiny-qwen35/heldout.txt --hf examples/tiny-qwen35
echo "== compare: the ONNX decode step in onnxruntime vs converted in gdnc"
$GDNC compare "$DECODE"
echo "== draw: one layer before and after the rewrite -> out/before_after.svg"
$GDNC inspect "$MODEL" --draw out/before_after.svg --quiet
