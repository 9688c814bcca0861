"""BatchNorms with non-trivial statistics, for tests of the BNNeck (a fresh BatchNorm is the
identity up to 1e-5, so it cannot tell "after the neck" from "before")."""
from __future__ import annotations

import torch

__all__ = ["with_real_stats"]


def with_real_stats(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every BatchNorm of ``model`` with running mean ~N(0, 2), variance in [0.2, 3] and affine
    weight in [0.5, 2.5], bias ~N(0, 0.5): a neck that is skipped changes features by O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.running_mean.copy_(2 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.2 + 2.8 * torch.rand(n, generator=g))
                mod.weight.copy_(0.5 + 2 * torch.rand(n, generator=g))
                mod.bias.copy_(0.5 * torch.randn(n, generator=g))
    return model
