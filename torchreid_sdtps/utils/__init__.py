"""Helpers in torchreid's ``torchreid.utils`` style.

``zero_modalities`` (:mod:`.modalities`) is the one definition of a missing modality that the
engine, the evaluation and the extractor share. ``FeatureExtractor`` is re-exported from its
home, :mod:`torchreid_sdtps.deploy.extractor` (the inference API); pictures live in
:mod:`torchreid_sdtps.viz`. Names resolve on first use (PEP 562), so importing this package
imports neither torch models nor the engine.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"FeatureExtractor": "torchreid_sdtps.deploy.extractor",
            "zero_modalities": "torchreid_sdtps.utils.modalities"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
