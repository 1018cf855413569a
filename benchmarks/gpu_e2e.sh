#!/usr/bin/env bash
# One device-tool call for issue 14 on a GPU: the gpu-marked tests of the compiled program, its
# CUDA graphs and the decode weight kernel (compiled == interpreter bit for bit without graphs;
# graphed == eager steps); the weight kernel against the chunk path and cuBLAS; `gdnc bench
# --e2e` on a 0.5B-class F16 file (corpus.sized_gguf) with CUDA graphs on and off
# (GDNC_CUDA_GRAPHS), and at prefill-2048 / 32 sequences; HF transformers (+ fla) on a model of
# the same shape in bf16 (benchmarks/hf_peer_decode.py); where a step's GPU time goes
# (benchmarks/gpu_step_profile.py). Results go to $OUT: gpu_tests.log, gpu_linear.json,
# e2e.jsonl (one gdnc bench object a line), hf.jsonl (one peer object a line),
# gpu_step_profile.json, log.txt. Usage (device tool, carry .whl): [PEER=1] [QUICK=1] bash benchmarks/gpu_e2e.sh
# (QUICK: the CUDA-graph and weight-kernel tests only, no sweep, no 2048 x 32 run, no profile,
# one round each)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 OUT=${OUT:-.} GDNC_CACHE_DIR=/tmp/gdnc-cache
LOG="$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
MORE_TESTS=$([ -n "${QUICK:-}" ] || echo tests/runtime/test_compiled.py tests/runtime/test_serving.py)
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda_graphs.py \
  tests/lowering/test_triton_linear.py $MORE_TESTS > "$OUT/gpu_tests.log" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed|GdncWarning" "$OUT/gpu_tests.log" | sort | uniq -c | head -20
[ -n "${QUICK:-}" ] || timeout 90 python3 benchmarks/gpu_linear.py --out "$OUT/gpu_linear.json" 2>&1 | tail -16
python3 -m corpus.sized_gguf --preset 0.5b --type f16 -o /tmp/0.5b-f16.gguf >> "$LOG" 2>&1 || exit 1
e2e() {  # bench options; one JSON line to e2e.jsonl, a summary to stdout
  python3 -m gdnc bench /tmp/0.5b-f16.gguf --e2e --device cuda --json "$@" > /tmp/e2e.json 2>> "$LOG"
  python3 -c "import json; r=json.load(open('/tmp/e2e.json')); print(json.dumps(r), file=open('$OUT/e2e.jsonl','a')); print('gdnc', r['prompt'], r['seqs'], {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items() if k.endswith(('tok_s', 'host_us', 'graphs', 'gbps'))})" || tail -3 "$LOG"
}
ROUNDS=$([ -n "${QUICK:-}" ] && echo 1 || echo 2)
GDNC_CUDA_GRAPHS=on e2e --rounds "$ROUNDS"  # side by side in one call
GDNC_CUDA_GRAPHS=off e2e --rounds "$ROUNDS"
[ -n "${QUICK:-}" ] || e2e --rounds 1 --lengths 2048 --batches 32
[ -n "${QUICK:-}" ] || timeout 90 python3 benchmarks/gpu_step_profile.py /tmp/0.5b-f16.gguf --out "$OUT/gpu_step_profile.json" 2>> "$LOG" | head -20
[ -n "${PEER:-}" ] || exit 0  # the HF peer only with PEER=1 (its figures change only with transformers or fla)
hf() {
  python3 benchmarks/hf_peer_decode.py --preset 0.5b --device cuda --dtype bfloat16 --out /tmp/hf.json "$@" >> "$LOG" 2>&1
  python3 -c "import json; r=json.load(open('/tmp/hf.json')); print(json.dumps(r), file=open('$OUT/hf.jsonl','a')); print('hf', r['prompt'], r['seqs'], r['fla'], {k: round(v, 1) for k, v in r.items() if k.endswith('tok_s')})" || tail -3 "$LOG"
}
hf
hf --prompt 2048 --seqs 32 --rounds 2
