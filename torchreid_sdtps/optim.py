"""Learning-rate schedules: torchreid's own, or linear warm-up then step / multi-step / cosine.

torchreid has no warm-up; :func:`build_lr_scheduler` returns torchreid's scheduler for its own
names without warm-up and a :class:`WarmupLR` otherwise (both stepped once per epoch).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from . import compat
from .errors import ConfigError

__all__ = ["WarmupLambda", "WarmupLR", "build_lr_scheduler", "SCHEDULERS"]

SCHEDULERS: tuple[str, ...] = ("single_step", "multi_step", "cosine", "warmup_single_step",
                               "warmup_multi_step", "warmup_cosine")


class WarmupLambda:
    """Per-epoch lr factor: linear warm-up, then step / multi-step / cosine decay.

    Warm-up: ``warmup_factor -> 1`` linearly over ``warmup_epoch`` epochs (epoch 0 uses
    ``warmup_factor``). Then ``single_step``: ``gamma ** (epoch // stepsize[-1])``;
    ``multi_step``: ``gamma ** #{milestones <= epoch}`` (absolute epochs, like torchreid's);
    ``cosine``: from 1 down to ``min_lr_factor`` over the remaining epochs.
    """

    def __init__(self, kind: str, max_epoch: int, warmup_epoch: int = 0,
                 warmup_factor: float = 0.01, stepsize: Sequence[int] = (),
                 gamma: float = 0.1, min_lr_factor: float = 0.0) -> None:
        if kind not in ("single_step", "multi_step", "cosine"):
            raise ValueError(f"unknown schedule '{kind}'; expected single_step, multi_step or "
                             "cosine")
        if warmup_epoch < 0 or not 0 < warmup_factor <= 1:
            raise ValueError(f"warm-up needs warmup_epoch >= 0 and 0 < warmup_factor <= 1; got "
                             f"{warmup_epoch}, {warmup_factor}")
        steps = [int(s) for s in (stepsize if isinstance(stepsize, (list, tuple)) else [stepsize])]
        if kind != "cosine" and (not steps or min(steps) <= 0):
            raise ValueError(f"{kind} needs positive train.stepsize; got {list(stepsize)}")
        self.kind = kind
        self.max_epoch = int(max_epoch)
        self.warmup_epoch = int(warmup_epoch)
        self.warmup_factor = float(warmup_factor)
        self.stepsize = steps
        self.gamma = float(gamma)
        self.min_lr_factor = float(min_lr_factor)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epoch:
            return self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epoch
        if self.kind == "single_step":
            return self.gamma ** (epoch // self.stepsize[-1])
        if self.kind == "multi_step":
            return self.gamma ** sum(epoch >= s for s in self.stepsize)
        span = max(1, self.max_epoch - self.warmup_epoch)
        progress = min(1.0, (epoch - self.warmup_epoch) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_lr_factor + (1 - self.min_lr_factor) * cosine


class WarmupLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a :class:`WarmupLambda` whose *schedule comes from the config*.

    The checkpoint keeps the position (``last_epoch``, base lrs), not the schedule's
    parameters: after ``load_state_dict`` the lr is recomputed from this object's schedule, so
    a run resumed with a longer ``max_epoch`` follows the new schedule.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict, lr_lambdas=[None] * len(self.lr_lambdas))
        super().load_state_dict(state)
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler: str = "warmup_cosine",
                       stepsize: Any = (30, 40), gamma: float = 0.1, max_epoch: int = 50,
                       warmup_epoch: int = 0, warmup_factor: float = 0.01,
                       min_lr_factor: float = 0.0) -> Any:
    """torchreid's ``build_lr_scheduler`` for its own names without warm-up; otherwise a
    :class:`WarmupLR` (stepped once per epoch, as torchreid's are)."""
    if lr_scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown train.lr_scheduler '{lr_scheduler}'; expected one of "
                          f"{list(SCHEDULERS)}")
    kind = lr_scheduler[len("warmup_"):] if lr_scheduler.startswith("warmup_") else lr_scheduler
    steps = list(stepsize) if isinstance(stepsize, (list, tuple)) else [int(stepsize)]
    if warmup_epoch == 0 and kind == lr_scheduler and min_lr_factor == 0:
        step_arg: Any = steps[-1] if kind == "single_step" else steps
        return compat.optim().build_lr_scheduler(optimizer, lr_scheduler=kind,
                                                 stepsize=step_arg, gamma=gamma,
                                                 max_epoch=max_epoch)
    return WarmupLR(
        optimizer, WarmupLambda(kind, max_epoch, warmup_epoch, warmup_factor, steps, gamma,
                                min_lr_factor))
