"""Selection-ratio loss: keeps the soft (Gumbel) token selection near the target ratio rho.

Under hard top-K selection the kept fraction is fixed by construction (``K = ceil(rho*N)``),
so the loss is a constant: it then reports an exact zero without a graph and adds nothing.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SelectionRatioLoss"]


class SelectionRatioLoss(nn.Module):
    """``(rho - mean(D_soft))^2`` averaged over samples and modalities.

    The mean of the soft decision is taken per sample and modality over the N patches
    (as DynamicViT/SEPS do), squared against ``rho``, then averaged over ``(B, M)``; with one
    row this is exactly ``(rho - mean(D_soft))^2``.

    Args:
        ratio: target kept fraction rho in (0, 1].
    """

    def __init__(self, ratio: float = 0.5) -> None:
        super().__init__()
        self.ratio = self._check_ratio(ratio)

    @staticmethod
    def _check_ratio(ratio: float) -> float:
        ratio = float(ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"SelectionRatioLoss: ratio must be in (0, 1], got {ratio}")
        return ratio

    def forward(self, soft_masks: torch.Tensor | None,
                ratio: float | None = None) -> torch.Tensor:
        """Loss for ``soft_masks`` of shape ``(..., N)``; ``None`` (hard top-K) gives 0.

        ``ratio`` overrides the constructor's rho for this call (the engine passes the
        model's own rho so the two cannot disagree).
        """
        rho = self.ratio if ratio is None else self._check_ratio(ratio)
        if soft_masks is None:
            return torch.zeros(())
        if soft_masks.dim() < 1 or soft_masks.shape[-1] == 0:
            raise ValueError("SelectionRatioLoss: soft_masks must have shape (..., N) with "
                             f"N > 0, got {tuple(soft_masks.shape)}")
        kept = soft_masks.float().mean(dim=-1)
        return ((rho - kept) ** 2).mean()
