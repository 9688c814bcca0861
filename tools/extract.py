#!/usr/bin/env python
"""``torchreid-sdtps-extract``: see ``--help`` and torchreid_sdtps/cli/extract.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("extract"))
