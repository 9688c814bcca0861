#!/usr/bin/env python
"""``torchreid-sdtps-train``: see ``--help`` and torchreid_sdtps/cli/train.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("train"))
