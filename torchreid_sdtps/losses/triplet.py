"""Soft-margin batch-hard triplet loss (DeMo's / TransReID's ``TripletLoss()`` without margin).

torchreid's ``TripletLoss`` is the hard-margin form ``max(0, d_ap - d_an + m)``
(``MarginRankingLoss``); DeMo trains with ``MODEL.NO_MARGIN``: ``SoftMarginLoss(d_an - d_ap,
1) = mean(log(1 + exp(d_ap - d_an)))`` over the hardest positive and negative of each anchor,
Euclidean distances (not squared) of the raw features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SoftMarginTripletLoss"]


class SoftMarginTripletLoss(nn.Module):
    """``forward(features (B, D), targets (B,)) -> scalar``; every anchor needs a positive and a
    negative in the batch (P x K identity sampling gives both)."""

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 2 or targets.shape != inputs.shape[:1]:
            raise ValueError(f"SoftMarginTripletLoss expects features (B, D) and targets (B,); "
                             f"got {tuple(inputs.shape)} and {tuple(targets.shape)}")
        x = inputs.float()
        sq = x.pow(2).sum(1, keepdim=True)
        dist = (sq + sq.t() - 2 * x @ x.t()).clamp(min=1e-12).sqrt()  # (B, B)
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
        d_an = dist.masked_fill(same, float("inf")).amin(1)
        if not torch.isfinite(d_an).all():
            raise ValueError("SoftMarginTripletLoss: a batch with a single identity has no "
                             "negatives; sample P x K identities")
        return F.soft_margin_loss(d_an - d_ap, torch.ones_like(d_an))
