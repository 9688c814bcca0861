#!/usr/bin/env python
"""``torchreid-sdtps-visualize``: see ``--help`` and torchreid_sdtps/cli/visualize.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("visualize"))
