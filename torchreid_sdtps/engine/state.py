"""Run state that must survive a checkpoint: the RNG streams, in types that
``torch.load(weights_only=True)`` accepts (the checkpoint files themselves belong to
:class:`torchreid_sdtps.checkpoint.Checkpointer`).
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state", "rng_fork"]


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
