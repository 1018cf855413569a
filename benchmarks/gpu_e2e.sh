#!/usr/bin/env bash
# One device-tool call for issue 14 on a GPU: the gpu-marked tests of the compiled program and
# its CUDA graphs (compiled == interpreter bit for bit without graphs; graphed == eager steps),
# then `gdnc bench --e2e` on a 0.5B-class F16 file (corpus.sized_gguf) with CUDA graphs on and
# off (GDNC_CUDA_GRAPHS), and at prefill-2048 / 32 sequences; then HF transformers (+ fla) on a
# model of the same shape in bf16 (benchmarks/hf_peer_decode.py). Logs and JSON go to $OUT.
# Usage (device tool, carry .whl): bash benchmarks/gpu_e2e.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-.} GDNC_CACHE_DIR=/tmp/gdnc-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda_graphs.py tests/runtime/test_compiled.py \
  tests/runtime/test_serving.py tests/lowering/test_triton_linear.py > "$OUT/gpu_tests.log" 2>&1
python3 benchmarks/gpu_linear.py --out "$OUT/gpu_linear.json" 2>&1 | tail -16
tail -30 "$OUT/gpu_tests.log"
python3 -m corpus.sized_gguf --preset 0.5b --type f16 -o /tmp/0.5b-f16.gguf || exit 1
e2e() {  # name, then bench options
  local name=$1; shift
  python3 -m gdnc bench /tmp/0.5b-f16.gguf --e2e --device cuda --json "$@" > "$OUT/e2e_$name.json" 2>> "$OUT/e2e.err"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items() if k.endswith(('tok_s', 'host_us', 'graphs', 'gbps'))})" "$OUT/e2e_$name.json"
}
GDNC_CUDA_GRAPHS=on e2e graphs_on --rounds 3  # side by side in one call
GDNC_CUDA_GRAPHS=off e2e graphs_off --rounds 3
e2e "graphs_on_2048x32" --rounds 2 --lengths 2048 --batches 32
tail -5 "$OUT/e2e.err"
python3 benchmarks/hf_peer_decode.py --preset 0.5b --device cuda --dtype bfloat16 --out "$OUT/hf_peer.json" \
  > "$OUT/hf_peer.log" 2>&1; tail -22 "$OUT/hf_peer.log"
python3 benchmarks/hf_peer_decode.py --preset 0.5b --device cuda --dtype bfloat16 --prompt 2048 --seqs 32 --rounds 2 \
  --out "$OUT/hf_peer_2048x32.json" > "$OUT/hf_peer_2048x32.log" 2>&1; tail -8 "$OUT/hf_peer_2048x32.log"
python3 benchmarks/gpu_step_profile.py /tmp/0.5b-f16.gguf --out "$OUT/gpu_step_profile.json" > "$OUT/gpu_step_profile.log" 2>&1
tail -32 "$OUT/gpu_step_profile.log"
