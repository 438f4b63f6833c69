#!/usr/bin/env bash
# The GPU path, checked on a GPU: the tests marked `gpu`, the training benchmark, one summary (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh --wheels .whl --out "$OUT"   # a CUDA machine: installs only from --wheels
#   bash benchmarks/gpu_check.sh --quick                      # any machine; without a GPU the GPU parts are skipped
#   bash benchmarks/gpu_check.sh --prepare-wheels .whl        # where a package registry is reachable
#   bash benchmarks/gpu_check.sh --help
#
# The Python: $PYTHON if set, else the repository's .venv when it has torch, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c \
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" 2>/dev/null; then
        PYTHON=.venv/bin/python
    else
        PYTHON=python3
    fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
