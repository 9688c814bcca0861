"""Using a trained model: the inference API, feature files, gallery search, ONNX export.

Submodules: :mod:`.extractor` (:class:`FeatureExtractor`: checkpoint -> features),
:mod:`.features` (feature sets in memory, the ``.pt`` file written), :mod:`.store` (the one
reader, :func:`~.store.load_features`: stores that map, ``.pt`` files) / :mod:`.store_writer`
(stores written in chunks), :mod:`.exact` (the one exact search, bounded memory),
:mod:`.index` (FAISS indexes), :mod:`.provenance` (how features were made; search refuses a
mismatch), :mod:`.onnx` (export, ONNX Runtime forward, parity on the checkpoint's data).
The commands are in :mod:`torchreid_sdtps.cli` (extract, search, index, export).
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FeatureExtractor"]


def __getattr__(name: str) -> Any:
    if name == "FeatureExtractor":
        return importlib.import_module(f"{__name__}.extractor").FeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
