#!/usr/bin/env bash
# The GPU check of issue 14, in one go, on a machine with a CUDA GPU (meant to finish well inside ten minutes; never run yet):
# the CUDA tests, the GPU step / throughput / memory figures, and the README's main job on the
# GPU, timed. Everything it prints goes to ${OUT:-runs/gpu_check}/ too. Needs the project installed
# with a CUDA build of torch (README, "Install torch first").
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch.cuda.is_available() is False)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -m gpu tests -q 2>&1 | tee "$out/tests.txt"
python scripts/bench_gpu.py --steps 100 2>&1 | tee "$out/bench_gpu.txt"
rm -rf "$out/main_job"
/usr/bin/time -f "main job on the GPU: wall %e s" stitchnas search pooling --device cuda --out "$out/main_job" --no-progress \
    2>&1 | tail -12 | tee "$out/main_job.txt"
echo "gpu_check: outputs in $out/"
