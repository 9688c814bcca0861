#!/usr/bin/env python
"""``torchreid-sdtps-index``: see ``--help`` and torchreid_sdtps/cli/index.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("index"))
