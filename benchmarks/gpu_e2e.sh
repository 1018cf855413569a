#!/usr/bin/env bash
# One device-tool call for issue 14 on a GPU: the compiled program against the interpreter in the
# gpu-marked tests (same logits bit for bit on every test model), then `gdnc bench --e2e` on a
# 0.5B-class F16 file (corpus.sized_gguf), compiled and interpreted. Logs go to $OUT.
# Usage (device tool, carry .whl): bash benchmarks/gpu_e2e.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-.} GDNC_CACHE_DIR=/tmp/gdnc-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_compiled.py tests/runtime/test_serving.py \
  tests/runtime/test_onnx_ops.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.log"
python3 -m corpus.sized_gguf --preset 0.5b --type f16 -o /tmp/0.5b-f16.gguf || exit 1
for mode in "" "--interpret"; do
  python3 -m gdnc bench /tmp/0.5b-f16.gguf --e2e --device cuda --rounds 3 --json $mode \
    > "$OUT/e2e_cuda${mode:+_interpret}.json" 2>> "$OUT/e2e_cuda.err"
  tail -c 400 "$OUT/e2e_cuda${mode:+_interpret}.json"
done
