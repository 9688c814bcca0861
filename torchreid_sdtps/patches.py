"""The plugin's patches into torchreid's own code paths, installed once by
:func:`install_hooks` when the plugin is imported (with the plugin installed, that happens on
``import torchreid``): the safe-loader allow-list for torchreid's checkpoints, the P x K check
in front of torchreid's sampler, and the binding of the multi-modal rank-list dispatcher.

Layout access is :mod:`torchreid_sdtps.compat`'s; what the patches check or allow comes from
:mod:`.checkpoint` and :mod:`.data.checks`, so these live here, above both.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import compat
from .checkpoint import safe_globals, safe_loading
from .data.checks import check_train_sampler

__all__ = ["checkpoint_safe_globals", "checkpoint_loading", "allow_checkpoint_globals",
           "patch_visrank", "patch_train_sampler", "install_hooks"]

#: attribute marking a function this module bound (so each patch is applied once)
_PATCHED = "__torchreid_sdtps_patch__"


def checkpoint_safe_globals() -> list:
    """NumPy scalar types torchreid's stock engines pickle (:func:`checkpoint.safe_globals`)."""
    return safe_globals()


def checkpoint_loading() -> Any:
    """Context in which torchreid's ``load_checkpoint`` / ``resume_from_checkpoint`` /
    ``load_pretrained_weights`` accept checkpoints written by torchreid's stock engines
    (:func:`checkpoint.safe_loading`)."""
    return safe_loading()


def allow_checkpoint_globals() -> None:
    """Allow-list :func:`checkpoint_safe_globals` for torch's safe loader, process-wide.

    torchreid's own ``load_pretrained_weights`` / ``resume_from_checkpoint`` /
    ``load_checkpoint`` (as called by upstream's ``scripts/main.py``) then read checkpoints of
    torchreid's stock engines (a NumPy ``rank1``) under torch>=2.6's ``weights_only=True``
    default. Only these NumPy scalar and dtype types are added: no code can run from them.
    """
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no safe loader default to satisfy
        add(checkpoint_safe_globals())


def _module_of(obj: Any) -> ModuleType:
    return sys.modules[obj.__module__]


def _patch(module: Any, name: str, make: Callable[[Callable], Callable]) -> bool:
    """Bind ``make(original)`` as ``module.name`` once; returns True when newly bound."""
    original = getattr(module, name)
    if getattr(original, _PATCHED, False):
        return False
    wrapper = make(original)
    wrapper.__wrapped__ = original
    setattr(wrapper, _PATCHED, True)
    setattr(module, name, wrapper)
    return True


def patch_visrank(dispatch: Callable[[Callable], Callable]) -> bool:
    """Bind ``dispatch(original)`` as ``visualize_ranked_results`` in torchreid's engine module
    (used by the stock engines' ``_evaluate``) and in ``torchreid.utils`` (used by
    ``ImageSDTPSEngine``). The multi-modal dispatcher lives with the pictures
    (:func:`torchreid_sdtps.viz.visrank.install`)."""
    a = _patch(_module_of(compat.engine().Engine), "visualize_ranked_results", dispatch)
    b = _patch(compat.utils(), "visualize_ranked_results", dispatch)
    return a or b


def _checked_sampler(original: Callable) -> Callable:
    def build_train_sampler(data_source: Any, train_sampler: str, batch_size: int = 32,
                            num_instances: int = 4, **kwargs: Any) -> Any:
        """torchreid's ``build_train_sampler`` after :func:`~torchreid_sdtps.data.checks.
        check_train_sampler` (a clear error instead of the sampler's bare assertion)."""
        check_train_sampler(data_source, train_sampler, batch_size, num_instances)
        return original(data_source, train_sampler, batch_size=batch_size,
                        num_instances=num_instances, **kwargs)

    return build_train_sampler


def patch_train_sampler() -> None:
    """Check P x K batches before torchreid's ``ImageDataManager`` builds its sampler."""
    _patch(_module_of(compat.data().ImageDataManager), "build_train_sampler", _checked_sampler)


def install_hooks() -> None:
    """Safe-loader allow-list and sampler checks, idempotent (the multi-modal visrank
    dispatcher is installed by :func:`torchreid_sdtps.viz.visrank.install`)."""
    allow_checkpoint_globals()
    patch_train_sampler()
