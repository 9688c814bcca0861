"""A tiny trained-model checkpoint for the deployment tests (extractor, search, export).

``tiny_checkpoint`` builds the demo's ``sdtps_vit_tiny`` (random init, SIE cameras) on a tiny
synthetic set (6 + 6 ids, 2 cameras, 64x32) through torchreid_sdtps.build and saves it with the SDTPS
engine, so the checkpoint carries the model meta exactly as after ``tools/train.py``.
"""
from __future__ import annotations

import os.path as osp
from typing import Any

import torch

from torchreid_sdtps import build, config

__all__ = ["TINY", "tiny_checkpoint"]

_SMALL = {"synthetic": dict(num_train_ids=6, num_test_ids=6, num_cameras=2, images_per_camera=2,
                            height=64, width=32),
          "data": dict(height=64, width=32), "train": dict(batch_size=8),
          "sampler": dict(num_instances=2), "test": dict(batch_size=64)}
TINY = [w for node, kv in _SMALL.items() for k, v in kv.items() for w in (f"{node}.{k}", str(v))]
TINY += ["use_gpu", "False"]


def tiny_checkpoint(root: str, save_dir: str, *opts: str) -> tuple[Any, Any, Any, str]:
    """``(cfg, datamanager, engine, checkpoint path)`` of a seeded tiny model."""
    torch.manual_seed(0)
    cfg = config.load_config(opts=TINY + ["data.root", str(root), "data.save_dir", str(save_dir),
                                          *opts], demo=True)
    dm, _, _, _, engine = build.build_all(cfg)
    engine.save_model(0, 0.0, str(save_dir))
    assert osp.isfile(engine.last_checkpoint)
    return cfg, dm, engine, engine.last_checkpoint
