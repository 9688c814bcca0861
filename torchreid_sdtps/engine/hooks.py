"""Engine hooks: a short list of callbacks the engine calls after a step, an epoch and an
evaluation, so studies and benchmarks observe a run without replacing engine methods.

Subclass :class:`EngineHook`, override what you need (the defaults do nothing) and pass
instances as ``ImageSDTPSEngine(..., hooks=[...])`` or ``build.build_all(cfg, hooks=[...])``.
Hooks run in list order, on every rank of a distributed run.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["EngineHook", "HookList"]


class EngineHook:
    """Base hook: every method does nothing."""

    def before_step(self, engine: Any, epoch: int, batch_idx: int) -> None:
        """Before one optimisation step (after the batch was loaded)."""

    def after_step(self, engine: Any, epoch: int, batch_idx: int,
                   summary: dict[str, float]) -> None:
        """After one optimisation step; ``summary`` is the step's loss summary."""

    def after_epoch(self, engine: Any, epoch: int) -> None:
        """After the training of epoch ``epoch`` (0-based), learning rate already updated."""

    def after_eval(self, engine: Any, epoch: int, results: dict) -> None:
        """After an evaluation; ``results`` is ``engine.last_results`` (per target)."""


class HookList(list):
    """The engine's hooks (a list of :class:`EngineHook`), calling each in order."""

    def __init__(self, hooks: Iterable[EngineHook] = ()) -> None:
        hooks = list(hooks)
        for h in hooks:
            if not isinstance(h, EngineHook):
                raise TypeError(f"engine hooks must be EngineHook instances, got "
                                f"{type(h).__name__}")
        super().__init__(hooks)

    def call(self, name: str, *args: Any) -> None:
        """Call method ``name`` of every hook with ``args``."""
        for h in self:
            getattr(h, name)(*args)
