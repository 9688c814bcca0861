#!/usr/bin/env python
"""Search query samples against a gallery feature file (top-k, distance threshold, JSON).

    python tools/search.py --help

The logic lives in torchreid_sdtps.deploy.cli (main_search).
"""
import os.path as osp
import sys

try:
    from torchreid_sdtps.deploy.cli import cli, main_search
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from torchreid_sdtps.deploy.cli import cli, main_search

if __name__ == "__main__":
    sys.exit(cli(main_search, "tools/search.py"))
