"""Utilities in torchreid's ``torchreid.utils`` style: ``FeatureExtractor``, rank-list pictures
(``visrank``), token heat maps (``token_maps``, ``visualize``).

Names resolve lazily (PEP 562), so importing this package imports neither torch models nor
the engine.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"FeatureExtractor": "feature_extractor", "zero_modalities": "modalities"}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
