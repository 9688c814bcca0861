"""Zeroing missing modalities: the one definition the evaluation and the extractor share."""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["zero_modalities"]


def zero_modalities(imgs: torch.Tensor, zeroed: Sequence[int]) -> torch.Tensor:
    """A copy of the normalised batch ``imgs (B, M, 3, H, W)`` with modalities ``zeroed`` set
    to 0 (as DeMo's missing-modality evaluation does); ``imgs`` itself is left unchanged."""
    if imgs.dim() != 5:
        raise ValueError(f"zeroing modalities needs images (B, M, 3, H, W), got shape "
                         f"{tuple(imgs.shape)}")
    if not zeroed:
        return imgs
    bad = [i for i in zeroed if not 0 <= int(i) < imgs.shape[1]]
    if bad:
        raise ValueError(f"modality indices {bad} out of range for {imgs.shape[1]} modalities")
    out = imgs.clone()
    out[:, [int(i) for i in zeroed]] = 0
    return out
