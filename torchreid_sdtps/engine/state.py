"""Run state that must survive a checkpoint: the RNG streams and the checkpoint files.

Checkpoints use torchreid's layout (``<dir>/model.pth.tar-<epoch>``), so torchreid's
``resume_from_checkpoint`` / ``load_pretrained_weights`` read them; they are written and read
through :mod:`torchreid_sdtps.checkpoint` (atomic, safe loading, strict weights) and hold the
RNG states in types that ``torch.load(weights_only=True)`` accepts.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os.path as osp
import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..checkpoint import (
    CheckpointError,
    load_into_model,
    read_checkpoint,
    save_checkpoint,
)

__all__ = ["get_rng_state", "set_rng_state", "rng_fork", "save_checkpoint_atomic",
           "load_checkpoint", "resume_from_checkpoint", "latest_checkpoint"]

logger = logging.getLogger(__name__)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, in types ``torch.load(weights_only=True)``
    accepts (the NumPy key array becomes a tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), int(pos),
                         int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


@contextlib.contextmanager
def rng_fork() -> Iterator[None]:
    """Run a block without disturbing the global RNG streams (evaluation, baselines)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def save_checkpoint_atomic(state: dict[str, Any], save_dir: str, is_best: bool = False,
                           meta: dict[str, Any] | None = None) -> str:
    """torchreid's ``save_checkpoint`` layout (``model.pth.tar-<epoch>``, with
    ``model-best.pth.tar`` when ``is_best``), written by :func:`checkpoint.save_checkpoint`
    (atomic, with ``meta``)."""
    fpath = osp.join(save_dir, f"model.pth.tar-{state['epoch']}")
    for path in [fpath] + ([osp.join(save_dir, "model-best.pth.tar")] if is_best else []):
        save_checkpoint(state, path, meta=meta)
    logger.info("Checkpoint saved to \"%s\"", fpath)
    return fpath


def latest_checkpoint(save_dir: str) -> str | None:
    """The highest-epoch ``model.pth.tar-<epoch>`` under ``<save_dir>/model``, if any."""
    paths = glob.glob(osp.join(save_dir, "model", "model.pth.tar-*"))
    epochs = [(int(m.group(1)), p) for p in paths
              if (m := re.search(r"model\.pth\.tar-(\d+)$", p))]
    return max(epochs)[1] if epochs else None


def load_checkpoint(fpath: str) -> dict[str, Any]:
    """The checkpoint dict of ``fpath`` (:func:`checkpoint.read_checkpoint`: safe loading,
    torchreid's NumPy scalars accepted, :class:`CheckpointError` naming the file)."""
    return read_checkpoint(fpath)


def resume_from_checkpoint(fpath: str, model: torch.nn.Module, optimizer: Any = None,
                           scheduler: Any = None) -> tuple[int, dict[str, Any]]:
    """What torchreid's ``resume_from_checkpoint`` does, through the checkpoint contract: the
    weights loaded strictly (:func:`checkpoint.load_into_model`), then the optimizer and
    scheduler states; returns the epoch to start from and the checkpoint dict."""
    ckpt = read_checkpoint(fpath)
    if "epoch" not in ckpt:  # checked first: a refused resume leaves the model untouched
        raise CheckpointError(f"checkpoint '{fpath}' has no 'epoch': not a training checkpoint "
                              "to resume (model.load_weights loads weights alone)")
    load_into_model(model, ckpt, source_name=fpath)
    if optimizer is not None and "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and "scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["scheduler"])
    start_epoch = int(ckpt["epoch"])
    logger.info("Resumed from \"%s\" at epoch %d", fpath, start_epoch)
    return start_epoch, ckpt
