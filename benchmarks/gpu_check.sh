#!/usr/bin/env bash
# The GPU check of the real-data recipe, in one command, from the repository root:
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 by default; NO_INSTALL=1 skips pip
# 1. installs the project (pip install -e .) into the current Python;
# 2. the cost benchmark on CUDA (bench_cost.py: time, FLOPs, parameters, peak memory);
# 3. 2 epochs of sdtps_clip_vit_b16 at 256x128, RGBNT201 recipe with AMP, synthetic data
#    (benchmarks/gpu_check.py): samples/s, peak memory, the mAP table.
# Exits with status 2 and a message when torch sees no CUDA device.
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if [ "${NO_INSTALL:-0}" != 1 ]; then
    "$PYTHON" -m pip install -q -e .
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device; this check needs an NVIDIA GPU" >&2
    exit 2
fi
echo "== cost benchmark (CUDA) =="
"$PYTHON" benchmarks/bench_cost.py --device cuda --batch 32 --iters 20
echo "== 2 epochs, RGBNT201 recipe, AMP, synthetic 256x128 =="
"$PYTHON" benchmarks/gpu_check.py --epochs 2 "$@"
