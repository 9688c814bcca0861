"""SDTPS token selection, vectorised over modalities (DESIGN §4.2-4.3).

SDTPS (the TokenSparse + TokenAggregation stage of SEPS) replaces DeMo's HDM/ATM here. For
every modality ``m`` of ``M`` (RGB, NI, TI by default) it

1. scores each patch of ``P_m`` four ways: a learned ``s_p = sigmoid(MLP_m(P_m))``, the cosine to
   its own guide ``s_im = cos(P_m, g'_m)`` and to the other modalities' guides
   ``s_x(k) = cos(P_m, g'_k)`` (the cosines without gradient by default, as in SEPS);
2. keeps ``K = ceil(rho * N)`` patches, by hard top-K or, in training, by a straight-through
   Gumbel top-K whose noise enters the ranking;
3. folds the dropped patches into one extra token and aggregates the kept ones ``N_s -> N_c``.

Every per-modality layer is *stacked*: one parameter tensor with a leading ``M`` axis applied as
one batched matmul (``torch.baddbmm`` over ``M``), so the three modalities run as one call and no
block is copied per modality. Tensors are passed around as ``(B, M, ...)`` but the block keeps
them *modality-major in memory* (``(M, B, ...)`` contiguous, seen through ``transpose(0, 1)``):
every stacked layer then reshapes to ``(M, B*..., F)`` without copying, which makes the stacked
block at least as fast as a plain loop over modalities (``benchmarks/bench_cost.py --block``).
Shapes: B batch, M modalities, N patches, K kept (N_s), N_c aggregated, C width.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import QuickGELU

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
def _modality_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, M, ...)`` with ``(M, B, ...)`` contiguous memory (one copy unless it already is)."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def _per_modality(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a stacked ``(M, F)`` tensor so it broadcasts against ``(M, B, ..., F)`` of ``ndim`` dims."""
    return t.view(t.shape[0], *([1] * (ndim - 2)), t.shape[-1])


class StackedLinear(nn.Module):
    """``M`` independent linear layers in one batched matmul: ``(B, M, ..., in) -> (B, M, ..., out)``.

    Computed as ``baddbmm(bias, x_m, W)`` on the modality-major view ``x_m (M, B*..., in)``; the
    result is returned as a ``(B, M, ..., out)`` view of modality-major memory.
    """

    def __init__(self, num: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num, self.in_features, self.out_features = num, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num, in_features, out_features))  # (M, in, out)
        self.bias = nn.Parameter(torch.zeros(num, out_features)) if bias else None  # (M, out)
        nn.init.trunc_normal_(self.weight, std=0.02)  # timm's ViT init for Linear

    def forward(self, x: torch.Tensor, in_affine: StackedLayerNorm | None = None) -> torch.Tensor:
        """``in_affine``: a LayerNorm whose affine is folded into this layer (``x`` is then its
        normalised, affine-free output): ``(y * w + b) @ W + c = y @ (w W) + (b @ W + c)``."""
        xm = x.transpose(0, 1)  # (M, B, ..., in): a view; free to flatten when memory is modality-major
        flat = xm.reshape(self.num, -1, self.in_features)
        weight = self.weight
        bias = None if self.bias is None else self.bias.unsqueeze(1)  # (M, 1, out)
        if in_affine is not None:
            weight = in_affine.weight.unsqueeze(-1) * self.weight  # (M, in, out)
            shift = in_affine.bias.unsqueeze(1)  # (M, 1, in)
            bias = shift @ self.weight if bias is None else torch.baddbmm(bias, shift, self.weight)
        y = torch.bmm(flat, weight) if bias is None else torch.baddbmm(bias, flat, weight)
        return y.view(*xm.shape[:-1], self.out_features).transpose(0, 1)

    def extra_repr(self) -> str:
        return f"num={self.num}, in_features={self.in_features}, out_features={self.out_features}"


class StackedLayerNorm(nn.Module):
    """``M`` LayerNorms over the last dim with stacked ``(M, C)`` weight and bias."""

    def __init__(self, num: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(num, dim))
        self.bias = nn.Parameter(torch.zeros(num, dim))

    def forward(self, x: torch.Tensor, affine: bool = True) -> torch.Tensor:  # (B, M, ..., C)
        """``affine=False``: normalise only (the next layer folds the affine in, see
        :meth:`StackedLinear.forward`)."""
        y = F.layer_norm(x.transpose(0, 1), (self.dim,), eps=self.eps)  # (M, B, ..., C) contiguous
        if not affine:
            return y.transpose(0, 1)
        return torch.addcmul(_per_modality(self.bias, y.dim()), y, _per_modality(self.weight, y.dim())
                             ).transpose(0, 1)


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

    The decision values ``D`` weight the softmax multiplicatively,
    ``W_ij = D_j exp(l_ij) / Σ_k D_k exp(l_ik)``: with the forward value of ``D`` exactly 0/1 this
    is the softmax over the kept tokens, and unlike SEPS's ``- (1 - D) * 1e10`` the
    straight-through gradient into ``D`` stays finite, also at ``D_j = 0``:
    ``dW_ij/dD_j = exp(l_ij) (δ - W_i·) / Σ``. So when the input holds *all* N tokens (the
    straight-through modes of :class:`SDTPS`), a dropped token learns what joining the kept set
    would do to the aggregated tokens.
    """

    def __init__(self, dim: int, num_out: int, num_modalities: int = 3,
                 hidden_ratio: float = 0.2) -> None:
        super().__init__()
        self.num_out = num_out
        self.norm = StackedLayerNorm(num_modalities, dim)
        self.weight = StackedMlp(num_modalities, dim, max(1, int(dim * hidden_ratio)), num_out)
        self.scale = nn.Parameter(torch.ones(num_modalities, 1, 1))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, M, N_s, C)``, ``keep (B, M, N_s)`` decision values or None (all 1) ->
        ``V̂ (B, M, N_c, C)``.

        ``MLP(LN(x))`` with the LayerNorm's affine folded into the first linear layer:
        ``(y * w + b) @ W1 + b1 = y @ (w W1) + (b @ W1 + b1)``, so the per-token affine pass
        (and its two reductions in backward) becomes a few ``(M, C, hidden)`` products.
        """
        mlp = self.weight
        # modules called (not their tensors used) so that hooks, e.g. torchreid's complexity
        # counter, see them; every result is a (B, M, ...) view of modality-major memory
        y = self.norm(x, affine=False)
        hidden = mlp.act(mlp.fc1(y, in_affine=self.norm))  # (B, M, N_s, hidden)
        h = mlp.fc2(hidden).transpose(0, 1)  # (M, B, N_s, N_c)
        logits = h.transpose(-1, -2) * self.scale.unsqueeze(1)  # (M, B, N_c, N_s)
        if keep is None:
            weights = logits.softmax(dim=-1)
        else:  # D-weighted softmax, shifted by the largest logit of a kept token
            d = keep.transpose(0, 1).unsqueeze(-2)  # (M, B, 1, N_s)
            top = logits.detach().masked_fill(d.detach() <= 0, float("-inf")).amax(-1, keepdim=True)
            e = (logits - top.clamp_min(torch.finfo(logits.dtype).min)).clamp_max(30.0).exp() * d
            weights = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
        return (weights @ x.transpose(0, 1)).transpose(0, 1)  # one bmm over M*B


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

    ``[:, m, m]`` is ``s_im``; ``[:, m, k]`` for ``k != m`` is ``s_x(k)``. Computed as
    ``(P_m . g_k / |g_k|) / |P_m|`` so that the patches are not normalised (copied) first.
    """
    guides = F.normalize(guide, dim=-1).transpose(-1, -2)  # (B, C, M_k)
    pm = patches.transpose(0, 1)  # (M, B, N, C)
    dots = pm @ guides  # (M, B, N, M_k): one bmm over M*B
    norms = torch.linalg.vector_norm(pm, dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
    return (dots / norms).permute(1, 0, 3, 2)


def combine_scores(s_pred: torch.Tensor, sim: torch.Tensor, beta: float,
                   present: torch.Tensor | None = None) -> torch.Tensor:
    """``(1-2β) s_p + β ((2/(M-1)) Σ_{k≠m} s_x(k) + 2 s_im)``; ``(B,M,N), (B,M,M,N) -> (B,M,N)``.

    For M=3 this is the seed's ``(1-2β) s_pred + β (s_m2 + s_m3 + 2 s_im)``.

    ``present (B, M)`` bool (absent modalities, see ``SDTPSNet(mask_missing=True)``): the guide
    of an absent modality k is no evidence, so ``s_x(k)`` is left out and the cross term
    becomes ``(2/n) Σ_{k≠m, k present} s_x(k)`` with n the number of present k≠m (all present:
    the formula above). With no other modality present it falls back to ``2 s_im`` (the
    modality guides itself), so the score keeps its weights and range; never a division by 0.
    """
    m = sim.shape[1]
    if m < 2:
        raise ValueError(f"SDTPS scores need at least 2 modalities; got sim of shape {tuple(sim.shape)}")
    s_self = sim.diagonal(dim1=1, dim2=2).transpose(1, 2)  # (B, M, N)
    if present is None:
        s_cross = sim.sum(dim=2) - s_self  # Σ_{k≠m} s_x(k), (B, M, N)
        return (1 - 2 * beta) * s_pred + beta * ((2.0 / (m - 1)) * s_cross + 2 * s_self)
    eye = torch.eye(m, dtype=torch.bool, device=sim.device)
    other = present[:, None, :] & ~eye  # (B, M_m, M_k): k present and k != m
    count = other.sum(dim=-1, keepdim=True).to(sim.dtype)  # (B, M, 1)
    s_cross = (sim * other.unsqueeze(-1).to(sim.dtype)).sum(dim=2)  # (B, M, N)
    cross = torch.where(count > 0, 2.0 * s_cross / count.clamp_min(1.0), 2.0 * s_self)
    return (1 - 2 * beta) * s_pred + beta * (cross + 2 * s_self)


class Selection(NamedTuple):
    """Token decision: kept/dropped indices, mask ``D`` (forward = hard) and ``D_soft`` or None."""

    keep: torch.Tensor  # (B, M, K) long
    drop: torch.Tensor  # (B, M, N-K) long
    mask: torch.Tensor  # (B, M, N)
    soft: torch.Tensor | None  # (B, M, N)


def select_tokens(score: torch.Tensor, k: int, gumbel: bool = False, noise: float = 0.1,
                  tau: float = 0.1, straight_through: bool = False,
                  shift_invariant: bool = False) -> Selection:
    """Top-K decision over the last dim of ``score`` (B, M, N).

    ``gumbel=False, straight_through=False``: hard top-K, ``D`` has no gradient.
    ``straight_through=True``: the same decision, with ``D = D_hard + D_soft - D_soft.detach()``,
    ``D_soft = sigmoid((s - t) / tau)``, ``t`` midway between the K-th and (K+1)-th score, so
    every patch's score gets gradient (forward value exactly hard). ``gumbel=True`` (R2, R8):
    straight-through, and the noise ``noise * Gumbel(0, 1)`` enters the ranking first: the hard
    mask is the top-K of the noisy score ``s̃`` and ``D_soft`` is computed on ``s̃``.
    ``shift_invariant=True``: ``t`` carries gradient too, so ``D_soft`` depends on score
    differences only, like the decision itself: adding a constant to every score of a row gets
    no gradient (with ``t`` detached, a loss that wants "more kept" pushes all scores the same
    way until the sigmoid saturates; measured on the demo, docs/model.md).
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
    if not (gumbel or straight_through):
        return Selection(keep, drop, hard, None)
    if k < n:
        ranked = (noisy if shift_invariant else noisy.detach()).gather(
            -1, order[..., k - 1:k + 1])  # K-th, (K+1)-th
        soft = torch.sigmoid((noisy - ranked.mean(dim=-1, keepdim=True)) / tau)
    else:  # everything kept: nothing to learn from the selection
        soft = torch.ones_like(score)
    return Selection(keep, drop, hard + (soft - soft.detach()), soft)  # forward value exactly hard


class _PartitionRows(torch.autograd.Function):
    """Rows ``a`` and rows ``b`` of ``x (R, C)``, where ``[a, b]`` lists every row exactly once.

    Because the two index sets partition the rows, the backward writes each row's gradient once
    (two ``index_copy_``) instead of zero-filling and scatter-adding, and the forward copies
    whole rows (``index_select``) instead of gathering element by element.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(a, b)
        ctx.x_shape = x.shape
        return x.index_select(0, a), x.index_select(0, b)

    @staticmethod
    def backward(ctx, grad_a: torch.Tensor, grad_b: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, b = ctx.saved_tensors
        grad = grad_a.new_empty(ctx.x_shape)
        return grad.index_copy_(0, a, grad_a).index_copy_(0, b, grad_b), None, None


def _partition_tokens(patches: torch.Tensor, keep: torch.Tensor, drop: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept and dropped tokens ``(M, B, K, C)``, ``(M, B, N-K, C)`` of modality-major ``patches (B, M, N, C)``."""
    b, m, n, c = patches.shape
    first = (torch.arange(m * b, device=patches.device) * n).view(m, b, 1)  # row of token 0 of (m, b)
    rows = patches.transpose(0, 1).reshape(m * b * n, c)  # a view: the memory is modality-major
    kept, dropped = _PartitionRows.apply(rows, (keep.transpose(0, 1) + first).reshape(-1),
                                         (drop.transpose(0, 1) + first).reshape(-1))
    return kept.view(m, b, -1, c), dropped.view(m, b, -1, c)


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
        selection: ``"topk"``, ``"ste"`` or ``"gumbel"`` (training only; eval is always hard
            top-K), see :func:`select_tokens`. In the straight-through modes the aggregation
            runs over all N patches with ``D`` as its softmax weights (forward value: the kept
            patches'), so a dropped patch's score learns what keeping it would do.
        gumbel_noise: sigma_g, scale of the Gumbel noise added to the score before ranking.
        gumbel_tau: tau, temperature of the soft mask ``sigmoid((s̃ - t) / tau)``.
        score_grad: let gradient flow through the cosine scores (off by default, as SEPS).
        shift_invariant: the straight-through threshold carries gradient (see
            :func:`select_tokens`); needs ``selection`` ``"ste"`` or ``"gumbel"``.
        mlp_ratio: hidden width of the score MLP relative to C (C -> C/4 -> 1).
        aggr_hidden_ratio: hidden width of the aggregation MLP relative to C (SEPS: 0.2).
    """

    def __init__(self, dim: int, num_aggr: int, num_modalities: int = 3, ratio: float = 0.5,
                 beta: float = 0.25, selection: str = "topk", gumbel_noise: float = 0.1,
                 gumbel_tau: float = 0.1, score_grad: bool = False, mlp_ratio: float = 0.25,
                 aggr_hidden_ratio: float = 0.2, shift_invariant: bool = False) -> None:
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
        if shift_invariant and selection == "topk":
            raise ValueError("shift_invariant shapes the straight-through soft mask; selection "
                             "'topk' has none (use 'ste' or 'gumbel')")
        self.shift_invariant = shift_invariant
        self.num_modalities, self.ratio, self.beta = num_modalities, ratio, beta
        self.selection, self.gumbel_noise, self.gumbel_tau = selection, gumbel_noise, gumbel_tau
        self.score_grad, self.num_aggr = score_grad, num_aggr
        self.score_mlp = StackedMlp(num_modalities, dim, max(1, int(dim * mlp_ratio)), 1)
        self.aggregate = TokenAggregation(dim, num_aggr, num_modalities, aggr_hidden_ratio)

    def scores(self, patches: torch.Tensor, guide: torch.Tensor,
               present: torch.Tensor | None = None) -> torch.Tensor:
        """Combined score ``(B, M, N)`` of every patch (R1); ``present (B, M)``: see
        :func:`combine_scores`."""
        no_grad = contextlib.nullcontext() if self.score_grad else torch.no_grad()
        with no_grad:
            sim = minmax_normalize(guide_similarity(patches, guide))  # (B, M, M, N)
        s_pred = torch.sigmoid(self.score_mlp(patches)).squeeze(-1)  # (B, M, N)
        return combine_scores(s_pred, sim, self.beta, present)

    def forward(self, patches: torch.Tensor, guide: torch.Tensor,
                present: torch.Tensor | None = None) -> SDTPSOutput:
        """``patches (B, M, N, C)``, ``guide (B, M, C)`` -> :class:`SDTPSOutput`;
        ``present (B, M)`` bool or None (all present) leaves absent guides out of the scores."""
        patches = _modality_major(patches)  # every stacked op below reshapes without copying
        score = self.scores(patches, guide, present)  # (B, M, N)
        k = num_keep(patches.shape[2], self.ratio)
        train_mode = self.selection if self.training else "topk"
        sel = select_tokens(score, k, gumbel=train_mode == "gumbel", noise=self.gumbel_noise,
                            tau=self.gumbel_tau, straight_through=train_mode == "ste",
                            shift_invariant=self.shift_invariant)
        kept, dropped = _partition_tokens(patches, sel.keep, sel.drop)  # (M, B, K, C), (M, B, N-K, C)
        weights = score.gather(-1, sel.drop).softmax(dim=-1)  # (B, M, N-K)
        if sel.soft is None:  # D is exactly 1 on the kept and 0 on the dropped tokens:
            # aggregate the kept tokens V_s (multiplying by D would change no number)
            aggr = self.aggregate(kept.transpose(0, 1))
        else:  # D carries gradient: all N patches, D weighting the aggregation softmax (forward
            # value: the kept tokens' aggregation). The patches themselves are not multiplied by
            # D: a dropped patch's gradient then says what joining the kept set with its own
            # value (not a zeroed one) would do
            weights = weights * (1 - sel.mask.gather(-1, sel.drop))
            aggr = self.aggregate(patches, sel.mask)
        extra = weights.transpose(0, 1).unsqueeze(-2) @ dropped  # e (M, B, 1, C): one bmm over M*B
        aggr = aggr.transpose(0, 1)  # V̂ (M, B, N_c, C)
        tokens = torch.cat([aggr, extra], dim=2).transpose(0, 1)  # T_m (B, M, N_c + 1, C)
        return SDTPSOutput(tokens, tokens.mean(dim=2), sel.mask, sel.soft, score)

    def extra_repr(self) -> str:
        return (f"num_modalities={self.num_modalities}, ratio={self.ratio}, num_aggr={self.num_aggr}, "
                f"beta={self.beta}, selection={self.selection!r}, gumbel_noise={self.gumbel_noise}, "
                f"gumbel_tau={self.gumbel_tau}, score_grad={self.score_grad}, "
                f"shift_invariant={self.shift_invariant}")
