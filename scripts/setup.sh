#!/usr/bin/env bash
# Create .venv (once) and install gdnc with its development tools into it, every package at the
# version in scripts/constraints.txt (the versions the suite was last run with).
# GDNC_NEWEST=1: the newest release of every package within pyproject's ranges and beyond
# them for the dev tools (testing tomorrow's transformers on purpose); refresh the pins with
#   .venv/bin/python -m pip freeze --exclude-editable | grep -v '^torch==' > scripts/constraints.txt
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# gdnc needs onnxruntime (CPU); onnxruntime-gpu installs the same module and the two break each other.
if .venv/bin/python -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y onnxruntime-gpu onnxruntime 2>/dev/null
fi
# torch first and pinned: 2.13.0 is a small CPU build here; an unpinned torch may pull CUDA.
"${PIP[@]}" torch==2.13.0
if [ "${GDNC_NEWEST:-0}" = 1 ]; then
  "${PIP[@]}" --upgrade -e '.[dev]'
  "${PIP[@]}" --upgrade pytest hypothesis ruff mypy transformers onnxscript
else
  "${PIP[@]}" -c scripts/constraints.txt -e '.[dev]'
fi
