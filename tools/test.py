#!/usr/bin/env python
"""``torchreid-sdtps-test``: see ``--help`` and torchreid_sdtps/cli/test.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("test"))
