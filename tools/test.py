#!/usr/bin/env python
"""Rank a trained SDTPS checkpoint; ``--missing`` adds the missing-modality table.

    python tools/test.py                                    # the demo's latest checkpoint
    python tools/test.py --config-file configs/rgbnt201_sdtps_clip.yaml --root reid-data \
        --weights log/rgbnt201_sdtps_clip/model/model.pth.tar-50 --missing

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
    sys.exit(cli("test"))
