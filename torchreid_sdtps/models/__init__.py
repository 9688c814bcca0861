"""Models: ViT backbone, SDTPS block and ``SDTPSNet`` with its torchreid factories.

Names are resolved lazily (PEP 562) so that importing one submodule, e.g.
``torchreid_sdtps.models.backbone``, does not import the others.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "SDTPSNet": "net", "BNNeck": "net", "sdtps_clip_vit_b16": "net", "sdtps_vit_b16": "net",
    "sdtps_vit_tiny": "net", "SDTPS": "sdtps", "GlobalLocalGuide": "sdtps",
    "TokenAggregation": "sdtps", "build_backbone": "factory", "ViTBackbone": "backbone",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
