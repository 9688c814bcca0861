"""A tiny *trained* checkpoint for the deployment tests (extractor, search, export, provenance).

``tiny_checkpoint`` builds the demo's ``sdtps_vit_tiny`` (random init, SIE cameras) on the tiny
synthetic set of ``conftest.TINY_OPTS`` (6 + 6 ids, 2 cameras, 64x32) through
torchreid_sdtps.build and trains it :data:`EPOCHS` epochs with the SDTPS engine's ``run``, so
the checkpoint carries the model meta exactly as after ``tools/train.py``, its BNNecks hold
running statistics far from (0, 1) and its camera embedding has been trained: a deploy path
that skips the neck or the camera term changes the features (``test_provenance.py`` checks
that it does).

Training happens once per test session and option set: later calls rebuild the data manager
and engine on their own data root (the same generated data), load the trained weights and save
them with the engine into their ``save_dir`` (so the meta names their own data root).
"""
from __future__ import annotations

import os.path as osp
from typing import Any

import torch
from conftest import tiny_cfg

from torchreid_sdtps import build, config

__all__ = ["tiny_checkpoint", "EPOCHS"]

#: training epochs of the deploy checkpoint (3 batches each on the tiny set: ~1 s an epoch)
EPOCHS = 3
_TRAINED: dict[tuple[str, ...], str] = {}  # options -> checkpoint trained in this session


def tiny_checkpoint(root: str, save_dir: str, *opts: str) -> tuple[Any, Any, Any, str]:
    """``(cfg, datamanager, engine, checkpoint path)`` of the seeded tiny model trained
    :data:`EPOCHS` epochs (the engine holds the trained weights)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(root, save_dir, "train.max_epoch", str(EPOCHS), "test.eval_freq", "-1",
                   "train.print_freq", "1000", *opts)
    dm, _, _, _, engine = build.build_all(cfg)
    cached = _TRAINED.get(tuple(opts))
    if cached is None:
        engine.run(**config.engine_run_kwargs(cfg))
        assert engine.last_checkpoint and osp.isfile(engine.last_checkpoint)
        _TRAINED[tuple(opts)] = engine.last_checkpoint
        return cfg, dm, engine, engine.last_checkpoint
    state = torch.load(cached, map_location="cpu", weights_only=False)
    engine.model.load_state_dict(state["state_dict"])
    engine.save_model(EPOCHS - 1, 0.0, str(save_dir))  # this caller's config in the meta
    return cfg, dm, engine, engine.last_checkpoint
