"""Process-rank helpers: distributed runs log on rank 0 only."""
from __future__ import annotations

import os

import torch.distributed as dist


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the only process that logs summaries."""
    return rank() == 0
