"""Removing modalities: the one definition evaluation, training and the extractor share.

A removed (missing) modality is an all-zero *normalised* image, as in DeMo's missing-modality
evaluation. :func:`zero_modalities` is the only place that removes one: the missing-modality
table (the same modalities of every sample), the extractor's ``None`` entries and the training
modality dropout (a per-sample choice, a boolean ``(B, M)`` mask) all call it.
:func:`present_modalities` is its inverse, used by a model that treats an all-zero modality
as absent (``SDTPSNet(mask_missing=True)``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["zero_modalities", "present_modalities"]


def zero_modalities(imgs: torch.Tensor, zeroed: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """A copy of the normalised batch ``imgs (B, M, 3, H, W)`` with modalities ``zeroed`` set
    to 0 (as DeMo's missing-modality evaluation does); ``imgs`` itself is left unchanged.

    ``zeroed``: modality indices removed from every sample, or a boolean ``(B, M)`` tensor
    (True = remove that modality of that sample; the training modality dropout).
    """
    if imgs.dim() != 5:
        raise ValueError(f"zeroing modalities needs images (B, M, 3, H, W), got shape "
                         f"{tuple(imgs.shape)}")
    if isinstance(zeroed, torch.Tensor) and zeroed.dtype == torch.bool:
        if tuple(zeroed.shape) != tuple(imgs.shape[:2]):
            raise ValueError(f"per-sample modality mask must be (B, M) = {tuple(imgs.shape[:2])}, "
                             f"got {tuple(zeroed.shape)}")
        return imgs.masked_fill(zeroed.to(imgs.device)[:, :, None, None, None], 0)
    if len(zeroed) == 0:
        return imgs
    bad = [i for i in zeroed if not 0 <= int(i) < imgs.shape[1]]
    if bad:
        raise ValueError(f"modality indices {bad} out of range for {imgs.shape[1]} modalities")
    out = imgs.clone()
    out[:, [int(i) for i in zeroed]] = 0
    return out


def present_modalities(imgs: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` bool: which modalities of ``imgs (B, M, 3, H, W)`` hold an image, i.e. are
    not all zero (what :func:`zero_modalities` leaves of a removed one)."""
    return imgs.flatten(2).abs().amax(dim=-1) > 0
