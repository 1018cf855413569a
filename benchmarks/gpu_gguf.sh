#!/usr/bin/env bash
# One device-tool call for the GGUF path on a GPU: the gguf wheel (carried in .whl), the
# GPU-marked serving tests, the fixture logits on CUDA, then tokens/s (the kernel suite,
# tests/lowering, takes ~6 min on an H200: run it in a call of its own).
# Usage (device tool, carry .whl): bash benchmarks/gpu_gguf.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/runtime/test_serving.py -m gpu 2>&1 | tee "$OUT/gpu_serving.log" | tail -4
python3 - <<'PY' 2>&1 | tee "$OUT/gpu_fixtures.log"
import numpy as np
from gdnc.models.qwen_hybrid.model import HybridModel
for arch in ("qwen35", "qwen3next", "qwen35moe"):
    ref = dict(np.load(f"tests/fixtures/gguf/{arch}-fixture-ref.npz"))
    for fused in (False, True):
        m = HybridModel(f"tests/fixtures/gguf/{arch}-fixture-f32.gguf", fused=fused, device="cuda")
        for p in (0, 1):
            got = m.logits(ref[f"prompt{p}"]).cpu().numpy()
            want = ref[f"hf_{p}"]
            print(f"cuda {arch} fused={fused} prompt{p}: max|d| vs HF {np.abs(got - want).max():.2e}, "
                  f"top-1 {(got.argmax(-1) == want.argmax(-1)).mean():.3f}")
PY
timeout 200 python3 benchmarks/bench_generate.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"
