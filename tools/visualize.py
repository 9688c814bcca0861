#!/usr/bin/env python
"""Pictures of a trained model; ``tokens``: token heat maps (kept/dropped patches, scores).

    python tools/visualize.py tokens --weights log/x/model/model.pth.tar-20 --num 8

The logic lives in torchreid_sdtps.utils.visualize.
"""
from torchreid_sdtps.utils.visualize import main

if __name__ == "__main__":
    for path in main() or ():
        print(path)
