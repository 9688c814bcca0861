"""SDTPS token selection, vectorised over modalities (DESIGN §4.2-4.3).

SDTPS (the TokenSparse + TokenAggregation stage of SEPS) replaces DeMo's HDM/ATM here. For
every modality ``m`` of ``M`` (RGB, NI, TI by default) it

1. scores each patch of ``P_m`` four ways: a learned ``s_p = sigmoid(MLP_m(P_m))``, the cosine to
   its own guide ``s_im = cos(P_m, g'_m)`` and to the other modalities' guides
   ``s_x(k) = cos(P_m, g'_k)`` (the cosines without gradient by default, as in SEPS);
2. keeps ``K = ceil(rho * N)`` patches, by hard top-K or, in training, by a straight-through
   Gumbel top-K whose noise enters the ranking;
3. folds the dropped patches into one extra token and aggregates the kept ones ``N_s -> N_c``.

Every per-modality layer is *stacked*: one parameter tensor with a leading ``M`` axis applied in
one einsum, so the three modalities run as one batched call and no block is copied per
modality. Shapes: B batch, M modalities, N patches, K kept (N_s), N_c aggregated, C width.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..choices import SELECTIONS

__all__ = [
    "SELECTIONS", "QuickGELU", "StackedLinear", "StackedLayerNorm", "StackedMlp",
    "GlobalLocalGuide", "TokenAggregation", "SDTPS", "SDTPSOutput", "Selection",
    "num_keep", "num_aggregated", "minmax_normalize", "guide_similarity", "combine_scores",
    "select_tokens",
]

_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Stacked per-modality layers
# --------------------------------------------------------------------------------------------
class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _per_modality(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a stacked ``(M, F)`` tensor so it broadcasts against ``(B, M, ..., F)`` of ``ndim`` dims."""
    return t.view(t.shape[0], *([1] * (ndim - 3)), t.shape[-1])


class StackedLinear(nn.Module):
    """``M`` independent linear layers in one einsum: ``(B, M, ..., in) -> (B, M, ..., out)``."""

    def __init__(self, num: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num, self.in_features, self.out_features = num, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num, in_features, out_features))  # (M, in, out)
        self.bias = nn.Parameter(torch.zeros(num, out_features)) if bias else None  # (M, out)
        nn.init.trunc_normal_(self.weight, std=0.02)  # timm's ViT init for Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bm...i,mio->bm...o", x, self.weight)
        return y if self.bias is None else y + _per_modality(self.bias, y.dim())

    def extra_repr(self) -> str:
        return f"num={self.num}, in_features={self.in_features}, out_features={self.out_features}"


class StackedLayerNorm(nn.Module):
    """``M`` LayerNorms over the last dim with stacked ``(M, C)`` weight and bias."""

    def __init__(self, num: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(num, dim))
        self.bias = nn.Parameter(torch.zeros(num, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M, ..., C)
        x = F.layer_norm(x, (self.dim,), eps=self.eps)
        return x * _per_modality(self.weight, x.dim()) + _per_modality(self.bias, x.dim())


class StackedMlp(nn.Module):
    """Per-modality ``Linear -> GELU -> Linear``, stacked."""

    def __init__(self, num: int, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = StackedLinear(num, in_features, hidden)
        self.act = nn.GELU()
        self.fc2 = StackedLinear(num, hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# --------------------------------------------------------------------------------------------
# Guide, scoring, selection, aggregation
# --------------------------------------------------------------------------------------------
class GlobalLocalGuide(nn.Module):
    """Reduced global-local guide ``g'_m = QuickGELU(Linear_m(LN_m([g_m, mean(P_m)])))`` (R4)."""

    def __init__(self, dim: int, num_modalities: int = 3) -> None:
        super().__init__()
        self.norm = StackedLayerNorm(num_modalities, 2 * dim)
        self.proj = StackedLinear(num_modalities, 2 * dim, dim)
        self.act = QuickGELU()

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cls, patches.mean(dim=2)], dim=-1)  # (B, M, 2C)
        return self.act(self.proj(self.norm(x)))  # (B, M, C)


class TokenAggregation(nn.Module):
    """SEPS TokenAggregation ``N_s -> N_c``: ``W = softmax_Ns(MLP_m(V_s)^T * scale)``, ``V̂ = W V_s``.

    The kept decision values ``D`` mask the softmax multiplicatively (``+ log D`` on the logits):
    in the forward pass kept tokens have ``D = 1`` (no change) and, unlike SEPS's
    ``- (1 - D) * 1e10``, the straight-through gradient into ``D`` stays finite.
    """

    def __init__(self, dim: int, num_out: int, num_modalities: int = 3,
                 hidden_ratio: float = 0.2) -> None:
        super().__init__()
        self.num_out = num_out
        self.norm = StackedLayerNorm(num_modalities, dim)
        self.weight = StackedMlp(num_modalities, dim, max(1, int(dim * hidden_ratio)), num_out)
        self.scale = nn.Parameter(torch.ones(num_modalities, 1, 1))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.weight(self.norm(x)).transpose(-1, -2) * self.scale  # (B, M, N_c, N_s)
        if keep is not None:  # (B, M, N_s) decision values of the kept tokens
            logits = logits + keep.clamp_min(_EPS).log().unsqueeze(-2)
        return logits.softmax(dim=-1) @ x  # (B, M, N_c, C)


def num_keep(n: int, ratio: float) -> int:
    """``K = ceil(ratio * n)``, at least 1 and at most ``n`` (guarded against float round-up)."""
    return min(n, max(1, math.ceil(ratio * n - 1e-9)))


def num_aggregated(num_patches: int, ratio: float, aggr_ratio: float) -> int:
    """``N_c = round(N * rho * alpha)`` (half up), at least 1, from the backbone's real ``N`` (R9)."""
    return max(1, math.floor(num_patches * ratio * aggr_ratio + 0.5 + 1e-9))


def minmax_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Min-max normalise over ``dim`` to [0, 1]; a constant row gives 0 (no NaN)."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    span = hi - lo
    return torch.where(span > _EPS, (x - lo) / span.clamp_min(_EPS), torch.zeros_like(x))


def guide_similarity(patches: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Cosine of every patch of modality m to every guide k: ``(B,M,N,C), (B,M,C) -> (B,M,M,N)``.

    ``[:, m, m]`` is ``s_im``; ``[:, m, k]`` for ``k != m`` is ``s_x(k)``.
    """
    return torch.einsum("bmnc,bkc->bmkn", F.normalize(patches, dim=-1), F.normalize(guide, dim=-1))


def combine_scores(s_pred: torch.Tensor, sim: torch.Tensor, beta: float) -> torch.Tensor:
    """``(1-2β) s_p + β ((2/(M-1)) Σ_{k≠m} s_x(k) + 2 s_im)``; ``(B,M,N), (B,M,M,N) -> (B,M,N)``.

    For M=3 this is the seed's ``(1-2β) s_pred + β (s_m2 + s_m3 + 2 s_im)``.
    """
    m = sim.shape[1]
    if m < 2:
        raise ValueError(f"SDTPS scores need at least 2 modalities; got sim of shape {tuple(sim.shape)}")
    s_self = sim.diagonal(dim1=1, dim2=2).transpose(1, 2)  # (B, M, N)
    s_cross = sim.sum(dim=2) - s_self  # Σ_{k≠m} s_x(k), (B, M, N)
    return (1 - 2 * beta) * s_pred + beta * ((2.0 / (m - 1)) * s_cross + 2 * s_self)


class Selection(NamedTuple):
    """Token decision: kept/dropped indices, mask ``D`` (forward = hard) and ``D_soft`` or None."""

    keep: torch.Tensor  # (B, M, K) long
    drop: torch.Tensor  # (B, M, N-K) long
    mask: torch.Tensor  # (B, M, N)
    soft: torch.Tensor | None  # (B, M, N)


def select_tokens(score: torch.Tensor, k: int, gumbel: bool = False, noise: float = 0.1,
                  tau: float = 0.1) -> Selection:
    """Top-K decision over the last dim of ``score`` (B, M, N).

    ``gumbel=False``: hard top-K, ``D`` has no gradient. ``gumbel=True`` (R2, R8): the noise
    ``noise * Gumbel(0, 1)`` enters the ranking; the hard mask is the top-K of the noisy score
    ``s̃`` and ``D = D_hard + D_soft - D_soft.detach()`` with ``D_soft = sigmoid((s̃ - t) / tau)``,
    ``t`` midway between the K-th and (K+1)-th noisy score, so every patch's score gets gradient.
    """
    n = score.shape[-1]
    noisy = score
    if gumbel:
        tiny = torch.finfo(score.dtype).tiny  # keeps -log(E) finite in half precision too
        g = -torch.empty_like(score).exponential_().clamp_min_(tiny).log()  # Gumbel(0, 1)
        noisy = score + noise * g
    order = noisy.detach().argsort(dim=-1, descending=True)  # (B, M, N)
    keep, drop = order[..., :k], order[..., k:]
    hard = torch.zeros_like(score).scatter_(-1, keep, 1.0)
    if not gumbel:
        return Selection(keep, drop, hard, None)
    if k < n:
        ranked = noisy.detach().gather(-1, order[..., k - 1:k + 1])  # K-th, (K+1)-th
        soft = torch.sigmoid((noisy - ranked.mean(dim=-1, keepdim=True)) / tau)
    else:  # everything kept: nothing to learn from the selection
        soft = torch.ones_like(score)
    return Selection(keep, drop, hard + (soft - soft.detach()), soft)  # forward value exactly hard


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens along dim 2: ``(B,M,N,C), (B,M,K) -> (B,M,K,C)``."""
    return x.gather(2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


class SDTPSOutput(NamedTuple):
    """What :class:`SDTPS` returns."""

    tokens: torch.Tensor  # (B, M, N_c + 1, C) enhanced tokens [V̂, e]
    feature: torch.Tensor  # (B, M, C) f_m = mean(T_m)
    mask: torch.Tensor  # (B, M, N) decision D (forward value hard)
    soft_mask: torch.Tensor | None  # (B, M, N) D_soft in gumbel training, else None
    score: torch.Tensor  # (B, M, N) combined score


class SDTPS(nn.Module):
    """Score, select and aggregate the patch tokens of ``M`` modalities in one batched pass.

    Args:
        dim: token width C.
        num_aggr: ``N_c``, tokens after aggregation (see :func:`num_aggregated`).
        num_modalities: M (>= 2; the cross-modal score needs another modality).
        ratio: rho, kept fraction; ``K = ceil(rho * N)`` with N read from the input (R9).
        beta: score mixing weight in [0, 0.5].
        selection: ``"topk"`` or ``"gumbel"`` (training only; eval is always hard top-K).
        gumbel_noise: sigma_g, scale of the Gumbel noise added to the score before ranking.
        gumbel_tau: tau, temperature of the soft mask ``sigmoid((s̃ - t) / tau)``.
        score_grad: let gradient flow through the cosine scores (off by default, as SEPS).
        mlp_ratio: hidden width of the score MLP relative to C (C -> C/4 -> 1).
        aggr_hidden_ratio: hidden width of the aggregation MLP relative to C (SEPS: 0.2).
    """

    def __init__(self, dim: int, num_aggr: int, num_modalities: int = 3, ratio: float = 0.5,
                 beta: float = 0.25, selection: str = "topk", gumbel_noise: float = 0.1,
                 gumbel_tau: float = 0.1, score_grad: bool = False, mlp_ratio: float = 0.25,
                 aggr_hidden_ratio: float = 0.2) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}; got {selection!r}")
        if num_modalities < 2:
            raise ValueError(f"SDTPS needs num_modalities >= 2 (cross-modal scores); got {num_modalities}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"sdtps ratio rho must be in (0, 1]; got {ratio}")
        if not 0.0 <= beta <= 0.5:
            raise ValueError(f"beta must be in [0, 0.5] so that every score weight is >= 0; got {beta}")
        if num_aggr < 1:
            raise ValueError(f"num_aggr (N_c) must be >= 1; got {num_aggr}")
        if gumbel_noise < 0 or gumbel_tau <= 0:
            raise ValueError(f"need gumbel_noise >= 0 and gumbel_tau > 0; got {gumbel_noise}, {gumbel_tau}")
        self.num_modalities, self.ratio, self.beta = num_modalities, ratio, beta
        self.selection, self.gumbel_noise, self.gumbel_tau = selection, gumbel_noise, gumbel_tau
        self.score_grad, self.num_aggr = score_grad, num_aggr
        self.score_mlp = StackedMlp(num_modalities, dim, max(1, int(dim * mlp_ratio)), 1)
        self.aggregate = TokenAggregation(dim, num_aggr, num_modalities, aggr_hidden_ratio)

    def scores(self, patches: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Combined score ``(B, M, N)`` of every patch (R1)."""
        no_grad = contextlib.nullcontext() if self.score_grad else torch.no_grad()
        with no_grad:
            sim = minmax_normalize(guide_similarity(patches, guide))  # (B, M, M, N)
        s_pred = torch.sigmoid(self.score_mlp(patches)).squeeze(-1)  # (B, M, N)
        return combine_scores(s_pred, sim, self.beta)

    def forward(self, patches: torch.Tensor, guide: torch.Tensor) -> SDTPSOutput:
        """``patches (B, M, N, C)``, ``guide (B, M, C)`` -> :class:`SDTPSOutput`."""
        score = self.scores(patches, guide)  # (B, M, N)
        k = num_keep(patches.shape[2], self.ratio)
        sel = select_tokens(score, k, gumbel=self.training and self.selection == "gumbel",
                            noise=self.gumbel_noise, tau=self.gumbel_tau)
        d_keep, d_drop = sel.mask.gather(-1, sel.keep), sel.mask.gather(-1, sel.drop)  # (B,M,K), (B,M,N-K)
        kept = _gather(patches, sel.keep) * d_keep.unsqueeze(-1)  # V_s = gather(P * D), (B, M, K, C)
        weights = score.gather(-1, sel.drop).softmax(dim=-1) * (1 - d_drop)  # (B, M, N-K)
        extra = torch.einsum("bmn,bmnc->bmc", weights, _gather(patches, sel.drop))  # e (B, M, C)
        aggr = self.aggregate(kept, d_keep)  # V̂ (B, M, N_c, C)
        tokens = torch.cat([aggr, extra.unsqueeze(2)], dim=2)  # T_m (B, M, N_c + 1, C)
        return SDTPSOutput(tokens, tokens.mean(dim=2), sel.mask, sel.soft, score)

    def extra_repr(self) -> str:
        return (f"num_modalities={self.num_modalities}, ratio={self.ratio}, num_aggr={self.num_aggr}, "
                f"beta={self.beta}, selection={self.selection!r}, gumbel_noise={self.gumbel_noise}, "
                f"gumbel_tau={self.gumbel_tau}, score_grad={self.score_grad}")
