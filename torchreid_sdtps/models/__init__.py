"""Models: ViT backbone, SDTPS block, ``SDTPSOptions`` and ``SDTPSNet`` with its torchreid
factories (importing the package registers them all anyway, so nothing here is lazy)."""
from __future__ import annotations

from .backbone import ViTBackbone
from .factory import build_backbone
from .net import BNNeck, SDTPSNet, sdtps_clip_vit_b16, sdtps_vit_b16, sdtps_vit_tiny
from .options import SDTPSOptions
from .sdtps import SDTPS, GlobalLocalGuide, TokenAggregation

__all__ = ["BNNeck", "GlobalLocalGuide", "SDTPS", "SDTPSNet", "SDTPSOptions", "TokenAggregation",
           "ViTBackbone", "build_backbone", "sdtps_clip_vit_b16", "sdtps_vit_b16",
           "sdtps_vit_tiny"]
