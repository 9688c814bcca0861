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

* ``"residual"`` (:class:`ResidualHead`): the guide plus a learned, zero-initialised
  correction read from the enhanced tokens of *every* modality (the identity evidence is split
  across modalities, and a modality's own tokens cannot add what its guide lacks):
  ``f_m = sg(g'_m) + γ_m ⊙ Attn(q = sg(g'_m), k = v = LN_m([T_1; …; T_M]))``. The untouched
  guide is the residual and the query, and receives no gradient from this branch (the guide and
  its ``ori`` head train as without SDTPS; the branch trains through the tokens);
  ``γ_m = 0`` at initialisation, so the branch starts as ``ori`` and only moves where its own
  ID and triplet losses move it (refine, don't replace).

All are vectorised over modalities: per-modality weights are stacked (``M`` leading axis, one
batched matmul) and the attention runs once with the modality folded into the batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..choices import HEADS
from .sdtps import StackedLayerNorm, StackedLinear, StackedMlp

__all__ = ["HEADS", "MeanHead", "GuideAttention", "RefineHead", "ResidualHead", "build_head"]


class MeanHead(nn.Module):
    """``f_m = mean(T_m)`` over the ``N_c + 1`` enhanced tokens (the seed review's head)."""

    def forward(self, tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``tokens (B, M, T, C)``, ``guide (B, M, C)`` (unused) -> ``(B, M, C)``."""
        return tokens.mean(dim=2)


class GuideAttention(nn.Module):
    """What the attention heads share: each modality's guide as the query of one multi-head
    attention over a set of tokens, with stacked per-modality weights.

    Queries and keys are projected to ``key_dim`` channels, split into ``num_heads`` heads; the
    values are the tokens after modality ``m``'s LayerNorm, split into the same heads (no value
    or output projection), so each head returns a convex combination of the tokens' channels.
    One ``scaled_dot_product_attention`` call with the modality folded into the batch.

    Args:
        dim: token width C.
        num_modalities: M.
        num_heads: attention heads (None: ``max(1, C // 64)``); must divide C and ``key_dim``.
        key_dim: query/key width (None: ``max(num_heads, C // 8)`` rounded to the heads).
    """

    def __init__(self, dim: int, num_modalities: int = 3, num_heads: int | None = None,
                 key_dim: int | None = None) -> None:
        super().__init__()
        heads = int(num_heads) if num_heads is not None else max(1, dim // 64)
        key_dim = int(key_dim) if key_dim is not None else max(heads, dim // 8) // heads * heads
        if heads < 1 or dim % heads or key_dim % heads:
            raise ValueError(f"{type(self).__name__}: {heads} heads must divide the width {dim} "
                             f"and the key width {key_dim}")
        self.dim, self.num_heads, self.key_dim = dim, heads, key_dim
        self.norm_kv = StackedLayerNorm(num_modalities, dim)
        self.q = StackedLinear(num_modalities, dim, key_dim)
        self.k = StackedLinear(num_modalities, dim, key_dim)

    def attend(self, tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``tokens (B, M, T, C)`` (row m: what modality m's guide reads), ``guide (B, M, C)``
        -> ``(B, M, C)``."""
        b, m, t, c = tokens.shape
        h, r = self.num_heads, self.key_dim // self.num_heads
        kv = self.norm_kv(tokens)  # (B, M, T, C): modality m's own LayerNorm
        q = self.q(guide).reshape(b * m, h, 1, r)  # (B*M, H, 1, r)
        k = self.k(kv).reshape(b * m, t, h, r).transpose(1, 2)  # (B*M, H, T, r)
        v = kv.reshape(b * m, t, h, c // h).transpose(1, 2)  # (B*M, H, T, C/H)
        return F.scaled_dot_product_attention(q, k, v).reshape(b, m, c)  # one call for all M

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, key_dim={self.key_dim}"


class RefineHead(GuideAttention):
    """The guide as the query of one multi-head cross-attention over its modality's tokens,
    with a residual and an FFN; stacked per-modality weights.

    Light by design (the fusion part must stay a small fraction of an HDM + ATM fusion's
    parameters): the attention of :class:`GuideAttention` (C/8-wide queries and keys, the
    normalised tokens as values), then ``x = LN(g' + attn)`` and ``x + FFN(LN(x))`` with an FFN
    of ``C * mlp_ratio`` hidden units. About ``C^2 (2 / 8 + 2 mlp_ratio)`` weights per modality
    (C = 192: 29k).

    Args: those of :class:`GuideAttention`, and ``mlp_ratio``: FFN hidden width relative to C.
    """

    def __init__(self, dim: int, num_modalities: int = 3, num_heads: int | None = None,
                 key_dim: int | None = None, mlp_ratio: float = 0.25) -> None:
        super().__init__(dim, num_modalities, num_heads, key_dim)
        self.norm1 = StackedLayerNorm(num_modalities, dim)
        self.norm2 = StackedLayerNorm(num_modalities, dim)
        self.mlp = StackedMlp(num_modalities, dim, max(1, int(dim * mlp_ratio)), dim)

    def forward(self, tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``tokens (B, M, T, C)``, ``guide (B, M, C)`` -> refined guide ``(B, M, C)``."""
        x = self.norm1(guide + self.attend(tokens, guide))
        return x + self.mlp(self.norm2(x))


class ResidualHead(GuideAttention):
    """The guide, untouched and gradient-free, plus a zero-initialised cross-modal correction.

    Modality ``m``'s guide queries the enhanced tokens of all ``M`` modalities (the attention of
    :class:`GuideAttention`), and a per-channel scale ``γ_m`` (zero at initialisation) weighs
    the result. About ``2 M C^2 / 8`` weights (C = 192: 28k).

    Args: those of :class:`GuideAttention`.
    """

    def __init__(self, dim: int, num_modalities: int = 3, num_heads: int | None = None,
                 key_dim: int | None = None) -> None:
        super().__init__(dim, num_modalities, num_heads, key_dim)
        self.gamma = nn.Parameter(torch.zeros(num_modalities, dim))  # γ_m: the branch starts as g'

    def forward(self, tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``tokens (B, M, T, C)``, ``guide (B, M, C)`` -> ``sg(g') + γ ⊙ attn``, ``(B, M, C)``."""
        b, m, t, c = tokens.shape
        every = tokens.reshape(b, 1, m * t, c).expand(b, m, m * t, c)  # all M modalities' tokens
        guide = guide.detach()  # the branch's losses never move the guide (ori trains alone)
        return guide + self.gamma * self.attend(every, guide)


def build_head(name: str, dim: int, num_modalities: int) -> nn.Module:
    """The head called ``name`` (one of :data:`~torchreid_sdtps.choices.HEADS`)."""
    if name == "mean":
        return MeanHead()
    if name == "refine":
        return RefineHead(dim, num_modalities)
    if name == "residual":
        return ResidualHead(dim, num_modalities)
    raise ValueError(f"unknown token-branch head {name!r}; expected one of {list(HEADS)}")
