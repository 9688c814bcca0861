"""Utilities in torchreid's ``torchreid.utils`` style (``FeatureExtractor``).

Names resolve lazily (PEP 562), so importing this package imports neither torch models nor
the engine.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"FeatureExtractor": "feature_extractor", "zero_modalities": "modalities"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
