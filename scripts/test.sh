#!/usr/bin/env bash
# Set everything up, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check gdnc corpus tests examples benchmarks
.venv/bin/mypy gdnc
# pytest exit code 5 (no tests collected) is a failure too: set -e sees it as non-zero.
.venv/bin/python -m pytest "$@"
