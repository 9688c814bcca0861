"""Low-level helpers in torchreid's ``torchreid.utils`` style: ``zero_modalities``
(:mod:`.modalities`), the one definition of a missing modality that the engine, the evaluation
and the extractor share. The inference API is :class:`torchreid_sdtps.deploy.FeatureExtractor`;
pictures live in :mod:`torchreid_sdtps.viz`."""
from __future__ import annotations

from .modalities import zero_modalities

__all__ = ["zero_modalities"]
