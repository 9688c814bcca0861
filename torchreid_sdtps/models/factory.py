"""Build a backbone with its pretrained weights: the one place that joins ``backbone`` and ``weights``.

:mod:`.backbone` builds the timm ViT wrapper, :mod:`.weights` reads and converts checkpoints;
neither imports the other, this module imports both.
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .backbone import ViTBackbone
from .weights import load_pretrained

__all__ = ["build_backbone"]


def build_backbone(
    variant: str,
    img_size: int | tuple[int, int] | None = None,
    num_cameras: int = 0,
    pretrained: bool | str | os.PathLike = False,
    sie_coe: float = 3.0,
    drop_path_rate: float | None = None,
    allow_unsafe_pickle: bool | None = None,
    **kw: Any,
) -> ViTBackbone:
    """Build a :class:`ViTBackbone` and optionally load pretrained weights.

    ``pretrained``: False (random init), True (the variant's published file, downloaded once
    to ``torch.hub.get_dir()/checkpoints``) or a path to a local checkpoint (OpenAI CLIP JIT
    archive or state dict, timm ``.pth``/``.npz``). ``allow_unsafe_pickle`` opts in to
    ``torch.load(weights_only=False)`` for files that pickle Python objects.
    ``drop_path_rate`` None: the variant's (DeMo's) value, 0 for CLIP, 0.1 for the ImageNet ViTs. See
    :func:`~torchreid_sdtps.models.weights.load_pretrained`.
    """
    if allow_unsafe_pickle and not pretrained:
        raise ConfigError("allow_unsafe_pickle only applies when loading pretrained weights; "
                         f"got pretrained={pretrained!r}")
    model = ViTBackbone(variant, img_size=img_size, num_cameras=num_cameras, sie_coe=sie_coe,
                        drop_path_rate=drop_path_rate, **kw)
    if pretrained:
        load_pretrained(model, pretrained, variant, allow_unsafe_pickle=allow_unsafe_pickle)
    return model
