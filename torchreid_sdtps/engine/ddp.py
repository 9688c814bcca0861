"""DistributedDataParallel for build_all and the CLI: any torchreid engine, one process per device.

``torchrun --nproc_per_node N tools/train.py --config-file CFG`` starts N copies of the usual
command; ``build.build_all`` and ``cli`` then call, in order (each call is a no-op in a
single process unless stated):

1. :func:`torchreid_sdtps.dist.init_distributed` (NCCL on CUDA, gloo on the CPU);
2. :func:`use_distributed_sampler` - the train loader draws this rank's share of global
   batches (:class:`~torchreid_sdtps.data.samplers.DistributedIdentitySampler` for
   ``RandomIdentitySampler``, torch's ``DistributedSampler`` for ``RandomSampler``);
   ``train.batch_size`` stays the *global* batch, each rank loads ``batch_size / N``;
3. :func:`convert_model` - ``train.sync_bn``: every BatchNorm synchronised across ranks
   (before the optimizer is built: the layers are new modules);
4. :func:`wrap_model` - ``DistributedDataParallel``;
5. :func:`engine_class` - the engine is built from its class with
   :class:`DistributedEngineMixin` in front (made once per class, before construction):
   global-batch triplet/alignment losses (:class:`~torchreid_sdtps.losses.GlobalBatchLoss`),
   ``set_epoch`` on the sampler, per-(epoch, rank) reseeding, checkpoints and tensorboard on
   rank 0 only (checkpoints hold the *unwrapped* model, loadable without DDP), evaluation
   on the unwrapped model with rank 0's BatchNorm statistics;
6. ``train.auto_resume``: a run restarted by ``torchrun --max-restarts`` continues from the
   latest checkpoint in ``data.save_dir`` (:meth:`Checkpointer.find_resume`).

Reseeding: at the start of epoch e rank r seeds Python, NumPy and torch with
``train.seed + e * N + r``. The random state of an epoch is then a function of (seed, epoch,
rank) alone, so a restarted group repeats the epochs after the checkpoint exactly (torchreid's
stock engines keep no RNG in their checkpoints), and ranks draw different augmentations.
"""
from __future__ import annotations

import contextlib
import logging
import os
import os.path as osp
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import compat, dist
from ..checkpoint import Checkpointer, unwrap_model
from ..choices import SAMPLER_MODES
from ..data.samplers import DistributedIdentitySampler
from ..errors import ConfigError
from ..losses.criterion import SDTPSCriterion
from ..losses.gather import GlobalBatchLoss
from ..models.sync_bn import convert_sync_batchnorm

__all__ = [
    "DistributedEngineMixin", "engine_class", "make_engine", "is_distributed_run", "convert_model",
    "wrap_model", "use_distributed_sampler", "swapped_model", "shard_loader", "gather_shards",
    "FAIL_AT_ENV", "FAIL_MARKER_ENV",
]

logger = logging.getLogger(__name__)

#: test hook: ``"<rank>:<epoch>:<batch>"`` makes that rank exit abruptly before that training
#: step (0-based epoch and batch), once: only while the file named by FAIL_MARKER_ENV is absent
FAIL_AT_ENV = "TORCHREID_SDTPS_FAIL_AT"
FAIL_MARKER_ENV = "TORCHREID_SDTPS_FAIL_MARKER"


# ----------------------------------------------------------------------------- model

def convert_model(model: nn.Module, cfg: Any) -> nn.Module:
    """``train.sync_bn``: synchronised BatchNorm (needs a process group of > 1 process)."""
    if not cfg.train.sync_bn:
        return model
    if not dist.is_distributed():
        raise ConfigError("train.sync_bn needs a distributed run (torchrun --nproc_per_node "
                          "N with N > 1); a single process has nothing to synchronise with")
    return convert_sync_batchnorm(model)


def wrap_model(model: nn.Module, find_unused_parameters: bool = True) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed (device ``LOCAL_RANK`` on CUDA).

    ``find_unused_parameters`` (default True) is needed whenever some parameters can miss a
    step's graph: torchreid's stock engines call the model without camera labels and
    auxiliary outputs (the SIE embedding and SDTPS tokens then get no gradient), and
    ``train.fixbase_epoch`` freezes layers. It costs one autograd-graph walk per step; pass
    False only for an engine that uses every parameter at every step.
    """
    if not dist.is_distributed():
        return model
    cuda = any(p.is_cuda for p in model.parameters())
    ids = [torch.cuda.current_device()] if cuda else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused_parameters)


# ----------------------------------------------------------------------------- data

def use_distributed_sampler(datamanager: Any, cfg: Any) -> None:
    """Give ``datamanager`` a train loader over this rank's share (see the module doc).

    ``sampler.distributed``: ``auto`` (under DDP), ``always`` (also one process: the same
    global batches as N ranks) or ``never`` (refused under DDP: every rank would draw its own
    batches).
    """
    mode = cfg.sampler.distributed
    if mode not in SAMPLER_MODES:
        raise ConfigError(f"sampler.distributed must be one of {list(SAMPLER_MODES)}, got "
                          f"'{mode}'")
    world = dist.world_size()
    if mode == "never":
        if world > 1:
            raise ConfigError("sampler.distributed 'never' cannot be honoured under DDP: every "
                              "rank would draw its own batches; use 'auto'")
        return
    if mode == "auto" and world == 1:
        return
    batch = int(cfg.train.batch_size)
    if batch % world:
        raise ConfigError(f"train.batch_size {batch} (the global batch) must be divisible by "
                          f"the {world} processes")
    old = datamanager.train_loader
    data = old.dataset.train if hasattr(old.dataset, "train") else old.dataset
    kind = cfg.sampler.train_sampler
    if kind == "RandomIdentitySampler":
        sampler: Any = DistributedIdentitySampler(data, batch, cfg.sampler.num_instances,
                                                  seed=cfg.train.seed)
    elif kind == "RandomSampler":
        sampler = torch.utils.data.DistributedSampler(old.dataset, shuffle=True,
                                                      seed=cfg.train.seed, drop_last=True,
                                                      num_replicas=world, rank=dist.rank())
    else:
        raise ConfigError(f"sampler.train_sampler '{kind}' has no distributed version; use "
                          "RandomIdentitySampler or RandomSampler")
    datamanager.train_loader = DataLoader(
        old.dataset, batch_size=batch // world, sampler=sampler, num_workers=old.num_workers,
        pin_memory=old.pin_memory, drop_last=True, collate_fn=old.collate_fn)


def shard_loader(loader: Any) -> Any:
    """A loader over this rank's contiguous share of ``loader``'s samples (ranks in order, so
    the concatenation is the original order); ``loader`` itself when not distributed."""
    if not dist.is_distributed():
        return loader
    n, world, r = len(loader.dataset), dist.world_size(), dist.rank()
    indices = list(range(n * r // world, n * (r + 1) // world))
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=indices,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      collate_fn=loader.collate_fn)


def gather_shards(*lists: list) -> tuple[list, ...]:
    """Each list concatenated over ranks in rank order (evaluation features, pids, camids);
    unchanged when not distributed."""
    if not dist.is_distributed():
        return lists
    gathered = dist.all_gather_objects(lists)
    return tuple([x for part in gathered for x in part[i]] for i in range(len(lists)))


# ----------------------------------------------------------------------------- engine

class _NullWriter:
    """Tensorboard writer of ranks other than 0: accepts and drops everything."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def swapped_model(engine: Any, model: nn.Module) -> Iterator[None]:
    """Run a block with ``model`` as the engine's (registered) model."""
    old, old_reg = engine.model, engine._models.get("model")
    engine.model, engine._models["model"] = model, model
    try:
        yield
    finally:
        engine.model, engine._models["model"] = old, old_reg


def _maybe_fail(epoch: int, batch: int) -> None:
    """The fault-injection test hook (see :data:`FAIL_AT_ENV`)."""
    spec = os.environ.get(FAIL_AT_ENV)
    if not spec:
        return
    try:
        rank, at_epoch, at_batch = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"{FAIL_AT_ENV}='{spec}': expected '<rank>:<epoch>:<batch>'") from None
    marker = os.environ.get(FAIL_MARKER_ENV)
    if not marker:
        raise ConfigError(f"{FAIL_AT_ENV} needs {FAIL_MARKER_ENV} (a file path that makes the "
                          "failure happen once)")
    if (rank, at_epoch, at_batch) == (dist.rank(), epoch, batch) and not osp.exists(marker):
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(f"rank {rank} exited at epoch {epoch} batch {batch}\n")
        sys.stderr.flush()
        os._exit(17)


class DistributedEngineMixin:
    """Put in front of an engine class by :func:`engine_class`; ``seed`` is ``train.seed``
    (the per-(epoch, rank) reseeding). The batch-mining losses become global-batch ones: the
    SDTPS engine's criterion (:meth:`SDTPSCriterion.global_batch`) or a stock triplet engine's
    ``criterion_t``."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = int(seed)
        criterion = getattr(self, "criterion", None)
        if isinstance(criterion, SDTPSCriterion):
            criterion.global_batch()
        elif getattr(self, "criterion_t", None) is not None:  # torchreid's triplet engine
            self.criterion_t = GlobalBatchLoss(self.criterion_t)

    def _plain_model(self) -> nn.Module:
        return unwrap_model(self.model)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if not dist.is_main_process():
            self.writer = _NullWriter()  # torchreid's run() creates a writer only when None
        return super().run(*args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if dist.is_distributed():
            compat.utils().set_random_seed(self.seed + self.epoch * dist.world_size()
                                           + dist.rank())
        return super().train(*args, **kwargs)

    def two_stepped_transfer_learning(self, epoch: int, fixbase_epoch: int, open_layers: Any,
                                      model: Any = None) -> None:
        # torchreid looks up open_layers as attributes of the model: not of a DDP wrapper
        super().two_stepped_transfer_learning(epoch, fixbase_epoch, open_layers,
                                              model=unwrap_model(self.model if model is None
                                                           else model))

    def forward_backward(self, data: Any) -> Any:
        _maybe_fail(self.epoch, getattr(self, "batch_idx", 0))
        return super().forward_backward(data)

    def test(self, *args: Any, **kwargs: Any) -> Any:
        """Every rank evaluates the unwrapped model with rank 0's BatchNorm statistics."""
        plain = self._plain_model()
        dist.broadcast_buffers(plain)
        with swapped_model(self, plain):
            return super().test(*args, **kwargs)

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """Rank 0 writes the checkpoint of the unwrapped model; the others wait for it."""
        if dist.is_main_process():
            with swapped_model(self, self._plain_model()):
                super().save_model(epoch, rank1, save_dir, is_best=is_best)
        dist.barrier()

    def resume(self, source: Any) -> int:
        """The engine's ``resume`` (a stock engine: weights, optimizer, scheduler) into the
        unwrapped model (checkpoints hold no DDP prefix)."""
        with swapped_model(self, self._plain_model()):
            if hasattr(super(), "resume"):
                return super().resume(source)  # type: ignore[misc]
            return Checkpointer.resume(source, self.model, self.optimizer, self.scheduler)[0]


_CLASSES: dict[type, type] = {}


def is_distributed_run(cfg: Any) -> bool:
    """Whether the engine runs in its distributed form: under DDP, or with
    ``sampler.distributed always``."""
    return dist.is_distributed() or cfg.sampler.distributed == "always"


def engine_class(cls: type, cfg: Any) -> type:
    """``cls`` with :class:`DistributedEngineMixin` in front (one class per engine class) for a
    distributed run (:func:`is_distributed_run`); ``cls`` itself otherwise. Construct it with
    the engine's arguments plus ``seed=train.seed``."""
    if not is_distributed_run(cfg) or issubclass(cls, DistributedEngineMixin):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Distributed{cls.__name__}", (DistributedEngineMixin, cls),
                             {"__doc__": cls.__doc__})
    return _CLASSES[cls]


def make_engine(cls: type, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``, in its distributed form (:func:`engine_class`, seeded with
    ``train.seed``) for a distributed run."""
    if is_distributed_run(cfg):
        return engine_class(cls, cfg)(*args, seed=int(cfg.train.seed), **kwargs)
    return cls(*args, **kwargs)

