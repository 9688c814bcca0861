#!/usr/bin/env python
"""``torchreid-sdtps-train``: train a multi-modal SDTPS re-id model (no arguments: the demo).

    python tools/train.py                                   # synthetic demo (~5 min on 2 cores)
    python tools/train.py --config-file configs/rgbnt201_sdtps_clip.yaml --root reid-data
    python tools/train.py --config-file CFG train.max_epoch 60 sdtps.selection gumbel
    python tools/train.py --config-file CFG --resume log/x/model/model.pth.tar-10

The logic lives in torchreid_sdtps.cli (see docs/engine.md).
"""
import sys

from torchreid_sdtps.cli import cli

if __name__ == "__main__":
    sys.exit(cli("train"))
