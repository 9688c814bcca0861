"""Multi-modal datasets: the base class, RGBNT201, RGBNT100, MSVR310 and their errors.

``synthetic`` (the generated test-bed dataset) is registered through the entry points and is
not exported here. Names are resolved lazily (PEP 562), so importing a light submodule (e.g.
the synthetic spec, which the config reads) does not import the data sets.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiModalImageDataset": "multimodal", "MultiModalFolderDataset": "multimodal",
    "read_image": "multimodal", "ImageReadError": "multimodal",
    "MissingModalityError": "multimodal", "DatasetNotFoundError": "multimodal",
    "EmptySplitError": "multimodal", "DatasetFormatError": "multimodal",
    "RGBNT201": "rgbnt201", "RGBNT100": "rgbnt100", "MSVR310": "msvr310",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
