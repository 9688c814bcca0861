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
    """NumPy scalar types that torchreid's own engines pickle into checkpoints.

    torchreid's stock engines save ``rank1`` as a NumPy float; torch>=2.6 loads with
    ``weights_only=True`` and refuses it. These types hold plain numbers, so allow-listing
    them keeps the safe loader while accepting torchreid's files.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # NumPy 2 / NumPy 1
    types = [core.multiarray.scalar, np.dtype]
    types += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)]
    return types


def checkpoint_loading() -> Any:
    """Context in which torchreid's ``load_checkpoint`` / ``resume_from_checkpoint`` /
    ``load_pretrained_weights`` accept checkpoints written by torchreid's stock engines."""
    import contextlib

    import torch

    safe = getattr(torch.serialization, "safe_globals", None)
    return safe(checkpoint_safe_globals()) if safe is not None else contextlib.nullcontext()
