#!/usr/bin/env python
"""``torchreid-sdtps-search``: see ``--help`` and torchreid_sdtps/cli/search.py."""
import sys

from torchreid_sdtps.cli import run

if __name__ == "__main__":
    sys.exit(run("search"))
