"""Token-branch heads: what SDTPS's enhanced tokens hand to retrieval (DESIGN §4.4, issue 23).

SDTPS ends with the enhanced tokens ``T_m = [V̂, e]  (B, M, N_c + 1, C)`` of every modality.
A head turns them into the token-branch feature ``f_m (B, M, C)``, which ``SDTPSNet`` gives its
own BNNeck, ID classifier and triplet term (the ``sdtps`` head) and concatenates with the
untouched guide ``ori = cat_m g'_m`` for ranking:

* ``"mean"`` (:class:`MeanHead`): the seed review's form, ``f_m = mean(T_m)``. The guide enters
  only the (gradient-free) scores, so the branch is a pooled summary of the kept tokens that
  competes with ``g'_m`` in the concatenation instead of adding to it.
* ``"refine"`` (:class:`RefineHead`): the guide refined by its tokens, as Signal (AAAI'26) does
  with each modality's CLS: ``h_m = LN(g'_m + Attn(q = g'_m, k = v = LN(T_m)))``, then
  ``f_m = h_m + FFN(LN(h_m))`` (light: query/key at C/8, the tokens as values). The residual
  keeps the global feature and the attention adds what the selected tokens hold beyond it
  (refine, don't replace).

Both are vectorised over modalities: per-modality weights are stacked (``M`` leading axis, one
batched matmul) and the attention runs once with the modality folded into the batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..choices import HEADS
from .sdtps import StackedLayerNorm, StackedLinear, StackedMlp

__all__ = ["HEADS", "MeanHead", "RefineHead", "build_head"]


class MeanHead(nn.Module):
    """``f_m = mean(T_m)`` over the ``N_c + 1`` enhanced tokens (the seed review's head)."""

    def forward(self, tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``tokens (B, M, T, C)``, ``guide (B, M, C)`` (unused) -> ``(B, M, C)``."""
        return tokens.mean(dim=2)


class RefineHead(nn.Module):
    """The guide as the query of one multi-head cross-attention over its modality's tokens,
    with a residual and an FFN; stacked per-modality weights.

    Light by design (the fusion part must stay a small fraction of an HDM + ATM fusion's
    parameters): queries and keys are projected to ``key_dim`` (C/8) channels, split into
    ``num_heads`` heads; the values are the normalised tokens themselves, split into the same
    heads (no value or output projection), so the attention returns, per head, a convex
    combination of the tokens' channels. Then ``x = LN(g' + attn)`` and ``x + FFN(LN(x))``
    with an FFN of ``C * mlp_ratio`` hidden units. About ``C^2 (2 / 8 + 2 mlp_ratio)`` weights
    per modality (C = 192: 29k).

    Args:
        dim: token width C.
        num_modalities: M.
        num_heads: attention heads (None: ``max(1, C // 64)``); must divide C and ``key_dim``.
        key_dim: query/key width (None: ``max(num_heads, C // 8)`` rounded to the heads).
        mlp_ratio: FFN hidden width relative to C.
    """

    def __init__(self, dim: int, num_modalities: int = 3, num_heads: int | None = None,
                 key_dim: int | None = None, mlp_ratio: float = 0.25) -> None:
        super().__init__()
        heads = int(num_heads) if num_heads is not None else max(1, dim // 64)
        key_dim = int(key_dim) if key_dim is not None else max(heads, dim // 8) // heads * heads
        if heads < 1 or dim % heads or key_dim % heads:
            raise ValueError(f"RefineHead: {heads} heads must divide the width {dim} and the "
                             f"key width {key_dim}")
        self.dim, self.num_heads, self.key_dim = dim, heads, key_dim
        self.norm_kv = StackedLayerNorm(num_modalities, dim)
        self.q = StackedLinear(num_modalities, dim, key_dim)
        self.k = StackedLinear(num_modalities, dim, key_dim)
        self.norm1 = StackedLayerNorm(num_modalities, dim)
        self.norm2 = StackedLayerNorm(num_modalities, dim)
        self.mlp = StackedMlp(num_modalities, dim, max(1, int(dim * mlp_ratio)), dim)

    def forward(self, tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``tokens (B, M, T, C)``, ``guide (B, M, C)`` -> refined guide ``(B, M, C)``."""
        b, m, t, c = tokens.shape
        h, r = self.num_heads, self.key_dim // self.num_heads
        kv = self.norm_kv(tokens)  # (B, M, T, C)
        q = self.q(guide).reshape(b * m, h, 1, r)  # (B*M, H, 1, r)
        k = self.k(kv).reshape(b * m, t, h, r).transpose(1, 2)  # (B*M, H, T, r)
        v = kv.reshape(b * m, t, h, c // h).transpose(1, 2)  # (B*M, H, T, C/H)
        attn = F.scaled_dot_product_attention(q, k, v)  # (B*M, H, 1, C/H): one call for all M
        x = self.norm1(guide + attn.reshape(b, m, c))
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, key_dim={self.key_dim}"


def build_head(name: str, dim: int, num_modalities: int) -> nn.Module:
    """The head called ``name`` (one of :data:`~torchreid_sdtps.choices.HEADS`)."""
    if name == "mean":
        return MeanHead()
    if name == "refine":
        return RefineHead(dim, num_modalities)
    raise ValueError(f"unknown token-branch head {name!r}; expected one of {list(HEADS)}")
