"""Utilities in torchreid's ``torchreid.utils`` style: ``FeatureExtractor``, rank-list pictures
(``visrank``), token heat maps (``token_maps``, ``visualize``)."""
from __future__ import annotations

from .feature_extractor import FeatureExtractor
from .modalities import zero_modalities

__all__ = ["FeatureExtractor", "zero_modalities"]
