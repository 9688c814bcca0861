"""A tiny trained-model checkpoint for the deployment tests (extractor, search, export).

``tiny_checkpoint`` builds the demo's ``sdtps_vit_tiny`` (random init, SIE cameras) on the tiny
synthetic set of ``conftest.TINY_OPTS`` (6 + 6 ids, 2 cameras, 64x32) through
torchreid_sdtps.build and saves it with the SDTPS engine, so the checkpoint carries the model
meta exactly as after ``tools/train.py``.
"""
from __future__ import annotations

import os.path as osp
from typing import Any

import torch
from conftest import tiny_cfg

from torchreid_sdtps import build

__all__ = ["tiny_checkpoint"]


def tiny_checkpoint(root: str, save_dir: str, *opts: str) -> tuple[Any, Any, Any, str]:
    """``(cfg, datamanager, engine, checkpoint path)`` of a seeded tiny model."""
    torch.manual_seed(0)
    cfg = tiny_cfg(root, save_dir, *opts)
    dm, _, _, _, engine = build.build_all(cfg)
    engine.save_model(0, 0.0, str(save_dir))
    assert osp.isfile(engine.last_checkpoint)
    return cfg, dm, engine, engine.last_checkpoint
