"""Process-group helpers over ``torch.distributed`` (torchrun sets the environment).

``torchrun --nproc_per_node N tools/train.py ...`` exports ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` joins that group
(NCCL on CUDA, gloo on the CPU). Without torchrun every helper answers as a single process
(rank 0 of 1), so the same code paths run either way. Distributed runs log on rank 0 only.

Gathers:

- :func:`all_gather_with_grad`: concatenation over ranks of one tensor per rank (same shape),
  differentiable (torch's functional collectives, ``all_gather_single``; the older
  ``torch.distributed.nn.functional.all_gather`` is deprecated). Its backward *sums*
  the gradient of every rank's copy into the owning rank; with DDP's gradient averaging and
  every rank computing the same global loss, the parameter gradient equals the
  single-process gradient of that loss on the concatenated batch.
- :func:`all_gather_objects`: any picklable object per rank, possibly of different sizes
  (evaluation features of uneven shards).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "rank", "local_rank", "world_size", "is_distributed", "is_main_process",
    "init_distributed", "cleanup", "barrier", "all_gather_with_grad", "all_reduce_with_grad",
    "all_gather_tensor",
    "all_gather_objects", "broadcast_object", "main_first", "broadcast_buffers",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank on this machine (torchrun's ``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """True on rank 0, the only process that logs, writes tensorboard and checkpoints."""
    return rank() == 0


#: torch's switch that gives every torchrun restart a fresh store (see _shared_store_attempt)
FRESH_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def _shared_store_attempt() -> str | None:
    """The restart count to prefix the store with, or None when no prefix is needed.

    torchrun's agent shares one TCPStore with its workers across restarts (pytorch#135712):
    a restarted group then reads the previous attempt's keys (gloo's peer addresses:
    "connection refused"; NCCL's unique id). On one machine the agent's restart count is the
    same for every worker and isolates the attempts. Across machines it is not (each agent
    counts its own restarts), so there a warning asks for ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
    (a fresh store per restart), which makes the prefix unnecessary.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None:
        return None
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    if nodes > 1:
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and is_main_process():
            logger.warning("torchrun --max-restarts on %d machines with a shared rendezvous "
                           "store: restarted groups can read stale keys (pytorch#135712); "
                           "set %s=1 for torchrun on every machine", nodes, FRESH_STORE_ENV)
        return None
    return restart


def init_distributed(backend: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; returns True when this call
    initialised it (the caller then owns :func:`cleanup`).

    ``backend="auto"``: NCCL when CUDA is available, gloo otherwise. On CUDA the process uses
    the GPU ``LOCAL_RANK``. An already initialised group is kept (returns False).
    """
    if dist.is_available() and dist.is_initialized():
        return False
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={size} but {missing} are not set; start distributed "
                           "runs with torchrun (e.g. torchrun --nproc_per_node 2 "
                           "tools/train.py --config-file CFG)")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"distributed backend must be 'auto', 'nccl' or 'gloo', got "
                         f"'{backend}'")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA; use 'gloo' on the CPU")
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    restart = _shared_store_attempt()
    if restart is None:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        from torch.distributed.rendezvous import rendezvous

        store, rank_, size_ = next(rendezvous("env://", timeout=timeout))
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt_{restart}/",
                                                                        store),
                                rank=rank_, world_size=size_, timeout=timeout)
    if is_main_process():
        logger.info("distributed: %d processes, backend %s", world_size(), backend)
    return True


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating or downloading data), the others after it."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def _functional() -> Any:
    """torch's functional collectives when they have autograd (``all_gather_single``, recent
    torch), else None: then the older ``torch.distributed.nn.functional`` ops are used."""
    from torch.distributed import _functional_collectives as fc

    return fc if hasattr(fc, "all_gather_single") else None


def _waited(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.wait() if hasattr(tensor, "wait") else tensor


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``cat`` over ranks along dim 0, differentiable (see the module doc); identity when not
    distributed. Every rank must pass the same shape."""
    if not is_distributed():
        return tensor
    fc = _functional()
    if fc is None:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor.contiguous()), dim=0)
    return _waited(fc.all_gather_single(tensor.contiguous(), 0, dist.group.WORLD))


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable (the backward sums the ranks' gradients, the gradient
    of the sum of every rank's loss); identity when not distributed."""
    if not is_distributed():
        return tensor
    fc = _functional()
    if fc is None:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor.contiguous())
    return _waited(fc.all_reduce(tensor.contiguous(), "sum", dist.group.WORLD))


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``cat`` over ranks along dim 0 without gradient (labels); same shape on every rank."""
    if not is_distributed():
        return tensor
    out = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, dim=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object per rank, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, so all ranks
    evaluate with the weights the checkpoint holds."""
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
