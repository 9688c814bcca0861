"""``Checkpointer(run_dir)``: the one home of a run directory's files.

It owns the file names (``<run_dir>/<model>/model.pth.tar-<epoch>``, torchreid's layout, so
torchreid's ``resume_from_checkpoint`` / ``load_pretrained_weights`` read them; the best one;
the run's JSON files; the partial files of killed writes), saving (atomic, with meta), finding
the latest checkpoint, resuming any engine, and the run's lock (:class:`RunLock`). Reading
hands back what was read (:class:`Loaded`), so a command reads each checkpoint file once.
"""
from __future__ import annotations

import glob
import logging
import os
import os.path as osp
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .. import dist
from .files import CheckpointError, read_checkpoint, save_checkpoint
from .load import load_into_model
from .lock import RunLock
from .meta import unwrap_model

__all__ = ["Checkpointer", "Loaded", "resume_engine"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A checkpoint file as read: its path and its dict."""

    path: str
    data: dict[str, Any]


class Checkpointer:
    """The files of the run directory ``run_dir`` (see the module doc)."""

    #: checkpoint of epoch N: ``<PREFIX><N>``; the best one (``test.best_on_test``)
    PREFIX = "model.pth.tar-"
    BEST = "model-best.pth.tar"
    #: the results of ``torchreid-sdtps-train`` / ``-test`` and the run's attempts
    RESULTS = "results.json"
    TEST_RESULTS = "test_results.json"
    RUN_STATE = "run_state.json"
    #: ``.<name>.<mkstemp's 8 characters>.partial``: a killed atomic write of one of the above
    PARTIAL = re.compile(r"^\.(" + re.escape(PREFIX) + r"\d+|" + re.escape(BEST) + "|"
                         + "|".join(re.escape(n) for n in (RESULTS, TEST_RESULTS, RUN_STATE))
                         + r")\.[a-z0-9_]{8}\.partial$")

    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)

    # ------------------------------------------------------------------ names
    def model_dir(self, name: str = "model") -> str:
        """Folder of model ``name``'s checkpoints (torchreid: one per registered model)."""
        return osp.join(self.run_dir, name)

    def path(self, epoch: int, name: str = "model") -> str:
        return osp.join(self.model_dir(name), f"{self.PREFIX}{int(epoch)}")

    def best_path(self, name: str = "model") -> str:
        return osp.join(self.model_dir(name), self.BEST)

    def file(self, filename: str) -> str:
        """A run file (:attr:`RESULTS`, :attr:`TEST_RESULTS`, :attr:`RUN_STATE`)."""
        return osp.join(self.run_dir, filename)

    def checkpoints(self, name: str = "*") -> list[str]:
        """Every ``model.pth.tar-<epoch>`` of model ``name`` (``*``: of every model)."""
        return glob.glob(osp.join(self.run_dir, name, self.PREFIX + "*"))

    def latest(self, name: str = "model") -> str | None:
        """The highest-epoch checkpoint of model ``name``, if any."""
        pattern = re.compile(re.escape(self.PREFIX) + r"(\d+)$")
        epochs = [(int(m.group(1)), p) for p in self.checkpoints(name)
                  if (m := pattern.search(p))]
        return max(epochs)[1] if epochs else None

    # ------------------------------------------------------------------ write
    def save(self, state: Mapping[str, Any], name: str = "model", is_best: bool = False,
             meta: Mapping[str, Any] | None = None) -> str:
        """Write ``state`` (torchreid's keys, ``epoch`` among them) as epoch ``state['epoch']``
        of model ``name`` (and as the best one when ``is_best``), atomically with ``meta``;
        returns the epoch file's path."""
        fpath = self.path(state["epoch"], name)
        for path in [fpath] + ([self.best_path(name)] if is_best else []):
            save_checkpoint(state, path, meta=meta)
        logger.info("Checkpoint saved to \"%s\"", fpath)
        return fpath

    def remove_partials(self) -> list[str]:
        """Remove partial files of killed writes (:attr:`PARTIAL`) in the run dir and its model
        folders (rank 0 only, before anything is written); returns the removed paths."""
        if not dist.is_main_process() or not osp.isdir(self.run_dir):
            return []
        removed = []
        for path in glob.glob(osp.join(self.run_dir, ".*.partial")) + \
                glob.glob(osp.join(self.run_dir, "*", ".*.partial")):
            if self.PARTIAL.match(osp.basename(path)) and osp.isfile(path):
                os.remove(path)
                removed.append(path)
        if removed:
            logger.info("removed %d partial file(s) of an interrupted write: %s", len(removed),
                        ", ".join(removed))
        return removed

    def lock(self) -> RunLock:
        """The run's lock (a context manager; see :class:`RunLock`)."""
        return RunLock(self.run_dir)

    # ------------------------------------------------------------------ read
    @staticmethod
    def read(path: str | os.PathLike) -> Loaded:
        """Read ``path`` safely (:func:`read_checkpoint`: :class:`CheckpointError` naming it)."""
        return Loaded(os.fspath(path), read_checkpoint(path))

    def find_resume(self, explicit: str = "", auto: bool = False) -> str:
        """The checkpoint to resume: ``explicit``, else with ``auto`` the latest one here (rank 0
        decides, every rank gets its answer; multi-node runs need the run dir on a shared file
        system), else ``""``."""
        if explicit or not auto:
            return str(explicit)
        found = self.latest() if dist.is_main_process() else None
        found = dist.broadcast_object(found)
        if found and dist.is_main_process():
            logger.info("train.auto_resume: resuming from '%s'", found)
        return found or ""

    @staticmethod
    def resume(source: str | Loaded, model: torch.nn.Module, optimizer: Any = None,
               scheduler: Any = None) -> tuple[int, dict[str, Any]]:
        """What torchreid's ``resume_from_checkpoint`` does, through the checkpoint contract:
        the weights loaded strictly into the unwrapped ``model``, then the optimizer and
        scheduler states; returns the epoch to start from and the checkpoint dict."""
        loaded = source if isinstance(source, Loaded) else Checkpointer.read(source)
        ckpt, fpath = loaded.data, loaded.path
        if "epoch" not in ckpt:  # checked first: a refused resume leaves the model untouched
            raise CheckpointError(f"checkpoint '{fpath}' has no 'epoch': not a training "
                                  "checkpoint to resume (model.load_weights loads weights alone)")
        load_into_model(unwrap_model(model), ckpt, source_name=fpath)
        if optimizer is not None and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        logger.info("Resumed from \"%s\" at epoch %d", fpath, start_epoch)
        return start_epoch, ckpt


def resume_engine(engine: Any, source: str | Loaded) -> int:
    """Resume any engine from ``source``: its own ``resume`` (the SDTPS engine also restores the
    RNG and AMP states), else weights, optimizer and scheduler (torchreid's stock engines);
    returns the epoch to start from."""
    loaded = source if isinstance(source, Loaded) else Checkpointer.read(source)
    if hasattr(engine, "resume"):
        return int(engine.resume(loaded))
    start_epoch, _ = Checkpointer.resume(loaded, engine.model, engine.optimizer,
                                         engine.scheduler)
    return start_epoch
