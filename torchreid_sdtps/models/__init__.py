"""Models: ViT backbone, SDTPS block and ``SDTPSNet`` with its torchreid factories.

Names are resolved lazily (PEP 562) so that importing one submodule, e.g.
``torchreid_sdtps.models.backbone``, does not import the others.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SDTPSNet": "net", "BNNeck": "net", "sdtps_clip_vit_b16": "net", "sdtps_vit_b16": "net",
    "sdtps_vit_tiny": "net", "SDTPS": "sdtps", "GlobalLocalGuide": "sdtps",
    "TokenAggregation": "sdtps", "build_backbone": "factory", "ViTBackbone": "backbone",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
