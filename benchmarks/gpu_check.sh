#!/usr/bin/env bash
# The GPU check of the real-data recipe, in one command, from the repository root:
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 by default; NO_INSTALL=1 skips pip
# 1. installs the project (pip install -e .) into the current Python;
# 2. the cost benchmark on CUDA (bench_cost.py: time, FLOPs, parameters, peak memory);
# 3. 2 epochs of sdtps_clip_vit_b16 at 256x128, RGBNT201 recipe with AMP, synthetic data
#    (benchmarks/gpu_check.py): samples/s, peak memory, the mAP table;
# 4. the ablation (benchmarks/ablation.py): no_sdtps / sdtps_block / sdtps_align, 2 epochs each,
#    same recipe and seed, on the same synthetic data (random backbone weights): its table.
#    ABLATION_DATA=real runs it on RGBNT201 under ROOT (default reid-data) with CLIP weights.
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
echo "== ablation: no_sdtps / sdtps_block / sdtps_align, 2 epochs, RGBNT201 recipe =="
if [ "${ABLATION_DATA:-synthetic}" = real ]; then
    "$PYTHON" benchmarks/ablation.py --epochs 2 --seeds 1111 --root "${ROOT:-reid-data}" \
        --out log/gpu_check/ablation
else
    "$PYTHON" benchmarks/ablation.py --epochs 2 --seeds 1111 --root "${ROOT:-reid-data}" \
        --out log/gpu_check/ablation model.pretrained False \
        data.sources "['synthetic_msreid']" data.targets "['synthetic_msreid']" \
        synthetic.height 256 synthetic.width 128
fi
