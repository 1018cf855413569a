#!/usr/bin/env bash
# One device-tool call for real-size GGUF files on a GPU: writes 0.5B-class F16 / Q8_0 / Q4_K
# files (corpus.sized_gguf), then benchmarks/gpu_weights.py on them, then the fixture logits on
# CUDA (benchmarks/gpu_gguf.sh's first part). Usage (device tool, carry .whl):
#   bash benchmarks/gpu_real_size.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-.} GDNC_CACHE_DIR=/tmp/gdnc-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for t in f16 q8_0 q4_k; do
  python3 -m corpus.sized_gguf --preset 0.5b --type "$t" -o "/tmp/0.5b-$t.gguf" || exit 1
done
python3 benchmarks/gpu_weights.py /tmp/0.5b-f16.gguf /tmp/0.5b-q8_0.gguf /tmp/0.5b-q4_k.gguf 2>&1 | tee "$OUT/gpu_weights.log"
python3 -m gdnc run /tmp/0.5b-q4_k.gguf --device cuda -p hello -n 8 -t 4 --json 2>&1 | tail -3
python3 -m gdnc run /tmp/0.5b-q4_k.gguf --device cuda -p hello -n 1 -c 100000000; echo "rc=$?"
