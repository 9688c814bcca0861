#!/usr/bin/env python
"""``torchreid-sdtps-export``: see ``--help`` and torchreid_sdtps/cli/export.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("export"))
