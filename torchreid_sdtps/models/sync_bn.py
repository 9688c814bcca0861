"""Synchronised BatchNorm for DDP: batch statistics over the global batch of all ranks.

On CUDA this is torch's ``nn.SyncBatchNorm`` (:func:`convert_sync_batchnorm` uses its
``convert_sync_batchnorm``). torch's layer refuses CPU tensors, so CPU runs (gloo) get
:class:`GlobalBatchNorm`: the same computation written with the differentiable
all-reduce :func:`torchreid_sdtps.dist.all_reduce_with_grad`: global mean, then the global biased variance
of the centred input (two passes, as accurate as a single-process BatchNorm), running
statistics updated with the unbiased global variance. Outside training, or without a process
group, it is a plain BatchNorm. Both keep BatchNorm's parameter and buffer names, so
checkpoints load into either layer.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import dist

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input ``(B, C, *)``) with statistics over every rank's batch."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (B, C, ...) input, got shape "
                             f"{tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and dist.is_distributed()):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = dist.all_reduce_with_grad(torch.tensor([input.numel() / input.shape[1]],
                                             dtype=input.dtype, device=input.device))
        mean = dist.all_reduce_with_grad(input.sum(dims)) / count
        centred = input - mean.view(shape)
        var = dist.all_reduce_with_grad((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised across ranks (torch's ``SyncBatchNorm`` on
    CUDA, :class:`GlobalBatchNorm` on the CPU); weights, buffers and ``requires_grad`` kept.
    Convert *before* building the optimizer: the layers are new modules."""
    on_cuda = any(p.is_cuda for p in module.parameters())
    if on_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
