#!/usr/bin/env bash
# The GPU benchmark in one call of under 8 minutes: base preset, 128^3, bf16 autocast, eager and then compiled.
#   bash benchmarks/gpu.sh            # needs one CUDA device; writes bench-gpu.json and bench-gpu-compiled.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 200 "$PY" benchmarks/gpu.py --out bench-gpu.json "$@"
timeout 260 "$PY" benchmarks/gpu.py --compile --out bench-gpu-compiled.json "$@"
