"""The only module that knows torchreid's two package layouts.

``torchreid==0.2.5`` on PyPI keeps its modules under ``torchreid.reid.*`` and exposes
``torchreid.data``, ``torchreid.models``... as *attributes* of the top-level package
(``import torchreid.models`` fails there). Upstream deep-person-reid keeps them directly under
``torchreid.*``. Everything below reaches torchreid through attribute access on the top-level
package only, so both layouts work; the rest of the plugin goes through these helpers.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .registry import register_once

__all__ = [
    "torchreid", "layout", "data", "datasets", "models", "engine", "losses", "metrics",
    "optim", "utils", "image_dataset_base", "image_dataset_registry",
    "register_image_dataset", "model_factory", "build_transforms",
    "allow_checkpoint_globals", "patch_visrank", "patch_train_sampler", "install_hooks",
]


def torchreid() -> ModuleType:
    """Return the imported top-level ``torchreid`` package (either layout)."""
    return importlib.import_module("torchreid")


def layout() -> str:
    """``"pypi"`` for the ``torchreid.reid.*`` repackaging, ``"upstream"`` otherwise."""
    return "pypi" if hasattr(torchreid(), "reid") else "upstream"


def _sub(name: str) -> Any:
    tr = torchreid()
    try:
        return getattr(tr, name)
    except AttributeError as exc:  # pragma: no cover - broken install
        raise ImportError(
            f"torchreid at {getattr(tr, '__file__', '?')} has no attribute '{name}'; "
            "expected torchreid==0.2.5 (PyPI) or deep-person-reid>=1.4"
        ) from exc


def data() -> Any:
    """``torchreid.data``."""
    return _sub("data")


def datasets() -> Any:
    """``torchreid.data.datasets`` (the module holding the dataset registry)."""
    return data().datasets


def models() -> Any:
    """``torchreid.models``."""
    return _sub("models")


def engine() -> Any:
    """``torchreid.engine``."""
    return _sub("engine")


def losses() -> Any:
    """``torchreid.losses``."""
    return _sub("losses")


def metrics() -> Any:
    """``torchreid.metrics``."""
    return _sub("metrics")


def optim() -> Any:
    """``torchreid.optim``."""
    return _sub("optim")


def utils() -> Any:
    """``torchreid.utils``."""
    return _sub("utils")


def image_dataset_base() -> type:
    """torchreid's ``ImageDataset`` class."""
    return data().ImageDataset


def image_dataset_registry() -> dict:
    """The dict behind ``torchreid.data.register_image_dataset`` / ``init_image_dataset``."""
    return getattr(datasets(), "__image_datasets")


def register_image_dataset(name: str, cls: type) -> bool:
    """Register ``cls`` under ``name`` with torchreid's ``register_image_dataset``; idempotent
    (:func:`registry.register_once`: True when newly registered, ``ValueError`` on a clash).

    torchreid's own function raises on any repeated name, even for the same class.
    """
    return register_once(image_dataset_registry(), "dataset", name, cls,
                         insert=data().register_image_dataset)


def model_factory() -> dict:
    """The dict behind ``torchreid.models.build_model``."""
    return getattr(models(), "__model_factory")


def register_model(name: str, fn: Callable) -> bool:
    """Add a model factory to torchreid's ``build_model``; idempotent like datasets."""
    return register_once(model_factory(), "model", name, fn)


def build_transforms(*args: Any, **kwargs: Any) -> Any:
    """``torchreid.data.transforms.build_transforms``."""
    return data().transforms.build_transforms(*args, **kwargs)


def checkpoint_safe_globals() -> list:
    """NumPy scalar types torchreid's stock engines pickle (:func:`checkpoint.safe_globals`)."""
    from .checkpoint import safe_globals

    return safe_globals()


def checkpoint_loading() -> Any:
    """Context in which torchreid's ``load_checkpoint`` / ``resume_from_checkpoint`` /
    ``load_pretrained_weights`` accept checkpoints written by torchreid's stock engines
    (:func:`checkpoint.safe_loading`)."""
    from .checkpoint import safe_loading

    return safe_loading()


# --------------------------------------------------------------------------------------------
# Hooks into torchreid's own code paths (installed once by ``install_hooks()`` when the plugin
# is imported, which with the plugin installed happens on ``import torchreid``)
# --------------------------------------------------------------------------------------------
_PATCHED = "__torchreid_sdtps_patch__"


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
    import sys

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
    (:func:`torchreid_sdtps.viz.visrank.install`), so this module imports nothing above it."""
    a = _patch(_module_of(engine().Engine), "visualize_ranked_results", dispatch)
    b = _patch(utils(), "visualize_ranked_results", dispatch)
    return a or b


def _checked_sampler(original: Callable) -> Callable:
    def build_train_sampler(data_source: Any, train_sampler: str, batch_size: int = 32,
                            num_instances: int = 4, **kwargs: Any) -> Any:
        """torchreid's ``build_train_sampler`` after :func:`~torchreid_sdtps.data.checks.
        check_train_sampler` (a clear error instead of the sampler's bare assertion)."""
        from .data.checks import check_train_sampler

        check_train_sampler(data_source, train_sampler, batch_size, num_instances)
        return original(data_source, train_sampler, batch_size=batch_size,
                        num_instances=num_instances, **kwargs)

    return build_train_sampler


def patch_train_sampler() -> None:
    """Check P x K batches before torchreid's ``ImageDataManager`` builds its sampler."""
    _patch(_module_of(data().ImageDataManager), "build_train_sampler", _checked_sampler)


def install_hooks() -> None:
    """Safe-loader allow-list and sampler checks, idempotent (the multi-modal visrank
    dispatcher is installed by :func:`torchreid_sdtps.viz.visrank.install`)."""
    allow_checkpoint_globals()
    patch_train_sampler()
