"""The only module that knows torchreid's two package layouts.

``torchreid==0.2.5`` on PyPI keeps its modules under ``torchreid.reid.*`` and exposes
``torchreid.data``, ``torchreid.models``... as *attributes* of the top-level package
(``import torchreid.models`` fails there). Upstream deep-person-reid keeps them directly under
``torchreid.*``. Everything below reaches torchreid through attribute access on the top-level
package only (one mechanism, :func:`_accessor`), so both layouts work; the rest of the plugin
goes through these helpers. This module imports nothing of the plugin above the ground floor
(the patches into torchreid's code paths are :mod:`torchreid_sdtps.patches`).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .registry import register_once

__all__ = [
    "torchreid", "layout", "data", "datasets", "models", "engine", "losses", "metrics",
    "optim", "utils", "image_dataset_base", "image_dataset_registry", "model_factory",
    "register_image_dataset", "register_model", "build_transforms",
]


def torchreid() -> ModuleType:
    """Return the imported top-level ``torchreid`` package (either layout)."""
    return importlib.import_module("torchreid")


def layout() -> str:
    """``"pypi"`` for the ``torchreid.reid.*`` repackaging, ``"upstream"`` otherwise."""
    return "pypi" if hasattr(torchreid(), "reid") else "upstream"


def _accessor(path: str, doc: str) -> Callable[[], Any]:
    """A function returning ``torchreid.<path>`` (dotted attributes from the top-level
    package, so both layouts work); a missing attribute is an ``ImportError`` naming it."""

    def access() -> Any:
        obj: Any = torchreid()
        for part in path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:  # pragma: no cover - broken install
                raise ImportError(
                    f"torchreid at {getattr(torchreid(), '__file__', '?')} has no attribute "
                    f"'{path}' ('{part}' missing); expected torchreid==0.2.5 (PyPI) or "
                    "deep-person-reid>=1.4") from exc
        return obj

    access.__name__ = access.__qualname__ = path.rsplit(".", 1)[-1].strip("_")
    access.__doc__ = doc
    return access


data = _accessor("data", "``torchreid.data``.")
datasets = _accessor("data.datasets", "``torchreid.data.datasets`` (holds the dataset registry).")
models = _accessor("models", "``torchreid.models``.")
engine = _accessor("engine", "``torchreid.engine``.")
losses = _accessor("losses", "``torchreid.losses``.")
metrics = _accessor("metrics", "``torchreid.metrics``.")
optim = _accessor("optim", "``torchreid.optim``.")
utils = _accessor("utils", "``torchreid.utils``.")
image_dataset_base = _accessor("data.ImageDataset", "torchreid's ``ImageDataset`` class.")
image_dataset_registry = _accessor(
    "data.datasets.__image_datasets",
    "The dict behind ``torchreid.data.register_image_dataset`` / ``init_image_dataset``.")
model_factory = _accessor("models.__model_factory",
                          "The dict behind ``torchreid.models.build_model``.")


def register_image_dataset(name: str, cls: type) -> bool:
    """Register ``cls`` under ``name`` with torchreid's ``register_image_dataset``; idempotent
    (:func:`registry.register_once`: True when newly registered, ``ValueError`` on a clash).

    torchreid's own function raises on any repeated name, even for the same class.
    """
    return register_once(image_dataset_registry(), "dataset", name, cls,
                         insert=data().register_image_dataset)


def register_model(name: str, fn: Callable) -> bool:
    """Add a model factory to torchreid's ``build_model``; idempotent like datasets."""
    return register_once(model_factory(), "model", name, fn)


def build_transforms(*args: Any, **kwargs: Any) -> Any:
    """``torchreid.data.transforms.build_transforms``."""
    return data().transforms.build_transforms(*args, **kwargs)
