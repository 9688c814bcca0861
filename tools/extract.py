#!/usr/bin/env python
"""Extract multi-modal features of a data set split or a folder of RGB/NI/TI triples.

    python tools/extract.py --help

The logic lives in torchreid_sdtps.deploy.cli (main_extract).
"""
import os.path as osp
import sys

try:
    from torchreid_sdtps.deploy.cli import cli, main_extract
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from torchreid_sdtps.deploy.cli import cli, main_extract

if __name__ == "__main__":
    sys.exit(cli(main_extract, "tools/extract.py"))
