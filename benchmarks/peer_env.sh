#!/usr/bin/env bash
# The llama.cpp peer's environment, apart from the test command's: .bench-venv holding
# llama-cpp-python alone (built from source: ~12 min on 2 cores, once). Benchmarks run it as a
# subprocess beside gdnc's own .venv (benchmarks/real_size.py).
# Usage: bash benchmarks/peer_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.bench-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null \
  || CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/python" -m pip install -q --no-cache-dir \
       'llama-cpp-python==0.3.36' 'numpy<3'
"$VENV/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'
