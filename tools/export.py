#!/usr/bin/env python
"""Export a checkpoint to ONNX and check ONNX Runtime against PyTorch.

    python tools/export.py --help

The logic lives in torchreid_sdtps.deploy.cli (main_export).
"""
import os.path as osp
import sys

try:
    from torchreid_sdtps.deploy.cli import cli, main_export
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from torchreid_sdtps.deploy.cli import cli, main_export

if __name__ == "__main__":
    sys.exit(cli(main_export, "tools/export.py"))
