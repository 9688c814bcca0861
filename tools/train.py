#!/usr/bin/env python
"""Train a multi-modal SDTPS re-id model; with no arguments, the synthetic CPU demo.

    python tools/train.py                                   # synthetic demo (~5 min on 2 cores)
    python tools/train.py --config-file configs/rgbnt201_sdtps_clip.yaml --root reid-data
    python tools/train.py --config-file CFG train.max_epoch 60 sdtps.selection gumbel
    python tools/train.py --config-file CFG --resume log/x/model/model.pth.tar-10

The logic lives in torchreid_sdtps.engine.runner (see docs/engine.md).
"""
import os.path as osp
import sys

try:
    from torchreid_sdtps.engine.runner import cli
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from torchreid_sdtps.engine.runner import cli

if __name__ == "__main__":
    sys.exit(cli("train"))
