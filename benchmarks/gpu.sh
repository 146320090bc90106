#!/usr/bin/env bash
# The GPU benchmark: base preset, 128^3, bf16 autocast, eager and then compiled (under 8 minutes), then the
# end-to-end ratio of the brainfm fit step to the bare model step on the demo data at 1 mm with as many loader
# workers as the node has (under 6 more minutes, the first time including the 1 mm demo build and its cache).
#   bash benchmarks/gpu.sh            # needs one CUDA device; writes bench-gpu.json, bench-gpu-compiled.json and
#                                     # bench-gpu-end-to-end.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 200 "$PY" benchmarks/gpu.py --out bench-gpu.json "$@"
timeout 260 "$PY" benchmarks/gpu.py --compile --out bench-gpu-compiled.json "$@"
timeout 360 "$PY" benchmarks/end_to_end.py --variants shipped no_augmentation --steps 120 --warmup 20 \
    --out bench-gpu-end-to-end.json --set trainer.accelerator=gpu trainer.precision=bf16-mixed \
    model.init_args.net.init_args.preset=base data.crop_size=128 data.root=data/demo_1mm data.demo_spacing=1.0
