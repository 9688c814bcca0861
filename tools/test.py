#!/usr/bin/env python
"""``torchreid-sdtps-test``: rank a checkpoint; ``--missing`` adds the missing-modality table.

    python tools/test.py                                    # the demo's latest checkpoint
    python tools/test.py --config-file configs/rgbnt201_sdtps_clip.yaml --root reid-data \
        --weights log/rgbnt201_sdtps_clip/model/model.pth.tar-50 --missing

The logic lives in torchreid_sdtps.cli (see docs/engine.md).
"""
import sys

from torchreid_sdtps.cli import cli

if __name__ == "__main__":
    sys.exit(cli("test"))
