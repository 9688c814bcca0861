"""Global-batch losses under DDP: mine inside the batch of *all* ranks, as fast-reid does.

Batch-hard triplet and the cross-modal alignment loss pick positives and hardest negatives
inside the batch, so a per-rank loss on ``B/N`` samples is a different loss, not an
approximation of the global one. :class:`GlobalBatchLoss` gathers ``(inputs, labels)`` of every
rank (inputs through the differentiable all-gather of :func:`torchreid_sdtps.dist.
all_gather_with_grad`) and evaluates the wrapped criterion on the global batch; every rank
computes the same value. The all-gather's backward sums each rank's gradient into the owner
and DDP averages over the N ranks, so the parameter gradient is exactly the single-process
gradient of the loss on the concatenated batch. Per-sample-mean losses (label-smoothed
cross-entropy) need no wrapper: DDP's average of the per-rank means is the global mean.

Outside a process group the wrapper calls the criterion unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import dist

__all__ = ["GlobalBatchLoss", "gather_batch"]


def gather_batch(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """``(inputs, labels)`` of all ranks concatenated in rank order (inputs keep their
    gradient); unchanged when not distributed."""
    if not dist.is_distributed():
        return inputs, labels
    labels = torch.as_tensor(labels, device=inputs.device)
    return dist.all_gather_with_grad(inputs), dist.all_gather_tensor(labels)


class GlobalBatchLoss(nn.Module):
    """``criterion(inputs, labels)`` evaluated on the batch gathered over ranks.

    Attributes other than ``forward`` (e.g. ``margin``) are read from the wrapped criterion.
    """

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        inputs, labels = gather_batch(inputs, labels)
        return self.criterion(inputs, labels, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("criterion"), name)
