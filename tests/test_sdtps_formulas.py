"""TokenAggregation and the Gumbel training path against references written from the formulas
(issue 27.5; DESIGN.md section 4.3), one modality and one sample at a time with plain torch ops
(no stacked weights, no folded LayerNorm affine, no partition autograd function), forward values
*and* gradients. The stored snapshot (tests/data/sdtps_reference.pt) only pins an earlier
implementation; these pin the formulas.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchreid_sdtps.models.sdtps import SDTPS, TokenAggregation, num_keep, select_tokens

B, M, N, C = 2, 3, 12, 16


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (LayerNorm affine and scale included, so folding them is tested)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            offset = 1.0 if name.endswith(("scale", "norm.weight")) else 0.0
            p.copy_(offset + 0.5 * torch.randn(p.shape, generator=g))
    return module


def _aggregation_logits(agg: TokenAggregation, m: int, v: torch.Tensor) -> torch.Tensor:
    """``MLP_m(LN_m(v))^T * scale_m`` of one sample of modality m: ``v (N_s, C) -> (N_c, N_s)``."""
    y = F.layer_norm(v, (v.shape[-1],), agg.norm.weight[m], agg.norm.bias[m], agg.norm.eps)
    fc1, fc2 = agg.weight.fc1, agg.weight.fc2
    h = F.gelu(y @ fc1.weight[m] + fc1.bias[m]) @ fc2.weight[m] + fc2.bias[m]  # (N_s, N_c)
    return h.T * agg.scale[m]


def _aggregate_one(agg: TokenAggregation, m: int, v: torch.Tensor, d: torch.Tensor | None
                   ) -> torch.Tensor:
    """``V̂ = softmax_Ns(MLP_m(LN_m(V_s))^T * scale_m + log D) V_s`` of one sample of modality m
    (``v (N_s, C)``, ``d (N_s,)`` or None)."""
    logits = _aggregation_logits(agg, m, v)  # (N_c, N_s)
    if d is not None:
        logits = logits + torch.log(d.clamp_min(1e-12))[None]
    return torch.softmax(logits, dim=-1) @ v


def _aggregate_weighted(agg: TokenAggregation, m: int, v: torch.Tensor, d: torch.Tensor
                        ) -> torch.Tensor:
    """The straight-through aggregation of one sample of modality m over *all* its patches
    ``v (N, C)``: ``W_ij = D_j exp(l_ij) / Σ_k D_k exp(l_ik)`` (finite gradient at ``D_j = 0``;
    forward value: the softmax over the kept patches)."""
    logits = _aggregation_logits(agg, m, v)  # (N_c, N)
    w = d[None] * torch.exp(logits - logits.max(-1, keepdim=True).values.detach())
    return (w / w.sum(-1, keepdim=True)) @ v


def _aggregate_ref(agg: TokenAggregation, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """:func:`_aggregate_one` for every sample and modality of ``x (B, M, N_s, C)``."""
    return torch.stack([torch.stack([_aggregate_one(agg, m, x[b, m], None if keep is None else keep[b, m])
                                     for m in range(x.shape[1])]) for b in range(x.shape[0])])


def test_token_aggregation_matches_the_formula():
    torch.manual_seed(0)
    agg = _randomise(TokenAggregation(C, 4, M), seed=1)
    x = torch.randn(B, M, 6, C, requires_grad=True)
    keep = (0.2 + torch.rand(B, M, 6)).requires_grad_(True)  # general D values, not only 1
    proj = torch.randn(B, M, 4, C)
    for d in (keep, None):
        out = agg(x, d)
        ref = _aggregate_ref(agg, x, d)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        inputs = [x, *agg.parameters()] + ([keep] if d is not None else [])
        g_out = torch.autograd.grad((out * proj).sum(), inputs, allow_unused=True)
        g_ref = torch.autograd.grad((ref * proj).sum(), inputs, allow_unused=True)
        for a, b in zip(g_out, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # masking with D = 1 changes nothing; a tiny D removes a token from every output
    torch.testing.assert_close(agg(x, torch.ones(B, M, 6)), agg(x, None))
    small = torch.ones(B, M, 6)
    small[..., 0] = 1e-12
    moved = agg(x.detach(), small) - agg(x.detach(), None)
    assert moved.abs().max() > 1e-3


def test_gumbel_selection_matches_the_hand_derived_relaxation():
    """Noise before ranking; forward value exactly the hard top-K of the noisy score; the
    gradient of D is that of sigmoid((s̃ - t) / tau) with the threshold t held fixed:
    dD_i/ds_i = D_soft_i (1 - D_soft_i) / tau, for every patch."""
    k, noise, tau = 5, 0.3, 0.2
    score = torch.rand(B, M, N, requires_grad=True)
    torch.manual_seed(3)
    sel = select_tokens(score, k, gumbel=True, noise=noise, tau=tau)
    torch.manual_seed(3)
    gumbel = -torch.log(torch.empty(B, M, N).exponential_())  # the same draw, by hand
    noisy = score.detach() + noise * gumbel
    top = noisy.topk(k + 1, dim=-1).values
    t = (top[..., k - 1] + top[..., k]) / 2
    hard = (noisy >= top[..., k - 1:k]).float()
    soft = torch.sigmoid((noisy - t[..., None]) / tau)
    assert torch.equal(sel.mask.detach(), hard) and hard.sum(-1).eq(k).all()
    torch.testing.assert_close(sel.soft.detach(), soft)
    assert set(sel.keep.sort(-1).values.flatten().tolist()) <= set(range(N))
    assert torch.equal(torch.zeros(B, M, N).scatter_(-1, sel.keep, 1.0), hard)
    # the noise enters the ranking: not the top-K of the clean score (for this draw)
    clean = torch.zeros(B, M, N).scatter_(-1, score.detach().topk(k, -1).indices, 1.0)
    assert not torch.equal(clean, hard)
    c = torch.randn(B, M, N)
    (grad,) = torch.autograd.grad((sel.mask * c).sum(), score)
    torch.testing.assert_close(grad, c * soft * (1 - soft) / tau, rtol=1e-5, atol=1e-6)
    assert (grad != 0).all()  # every patch's score gets gradient (R8)
    # no noise: the top-K of the score itself
    plain = select_tokens(score, k, gumbel=True, noise=0.0, tau=tau)
    assert torch.equal(plain.mask.detach(), clean)


def test_sdtps_gumbel_training_forward_and_gradient_match_the_formulas():
    """V̂ = TokenAggregation over all N patches with D weighting its softmax (forward: the kept
    patches' aggregation), e = Σ_dropped softmax(score_dropped)_i (1 - D_i) P_i, T = [V̂, e],
    f = mean(T): values and gradients (into the patches, the score MLP and the aggregation)
    equal a per-sample reference on the module's own score."""
    torch.manual_seed(0)
    sdtps = _randomise(SDTPS(C, 3, M, ratio=0.5, selection="gumbel", gumbel_noise=0.2,
                             gumbel_tau=0.3), seed=2).train()
    patches = torch.randn(B, M, N, C, requires_grad=True)
    guide = torch.randn(B, M, C)
    torch.manual_seed(5)
    out = sdtps(patches, guide)

    torch.manual_seed(5)  # scores() draws nothing; the Gumbel draw comes next, as in forward
    score = sdtps.scores(patches, guide)
    k = num_keep(N, 0.5)
    # the same draw: empty_like keeps the score's (modality-major) memory layout
    noisy = score.detach() + 0.2 * -torch.log(torch.empty_like(score).exponential_())
    order = noisy.argsort(-1, descending=True)
    top = noisy.gather(-1, order[..., k - 1:k + 1])
    soft = torch.sigmoid((score + (noisy - score.detach()) - top.mean(-1, keepdim=True)) / 0.3)
    hard = torch.zeros(B, M, N).scatter_(-1, order[..., :k], 1.0)
    d = hard + soft - soft.detach()
    tokens = []
    for b in range(B):
        per_mod = []
        for m in range(M):
            drop = order[b, m, k:]
            w = torch.softmax(score[b, m, drop], dim=0) * (1 - d[b, m, drop])
            e = (w[:, None] * patches[b, m, drop]).sum(0, keepdim=True)
            v_hat = _aggregate_weighted(sdtps.aggregate, m, patches[b, m], d[b, m])
            per_mod.append(torch.cat([v_hat, e]))
        tokens.append(torch.stack(per_mod))
    ref = torch.stack(tokens)
    torch.testing.assert_close(out.tokens, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.feature, ref.mean(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mask.detach(), hard)
    proj = torch.randn_like(ref)
    inputs = [patches, *sdtps.parameters()]
    g_out = torch.autograd.grad((out.tokens * proj).sum(), [*inputs, out.score],
                                allow_unused=True)
    g_ref = torch.autograd.grad((ref * proj).sum(), inputs, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (g_out[-1] != 0).all()  # every patch's score gets gradient, kept or dropped (R8)


@pytest.mark.parametrize("training", [False, True])
def test_gumbel_is_training_only_eval_is_the_hard_topk_of_the_score(training):
    """A Gumbel model draws its soft mask in training only; in evaluation D is the hard top-K
    of the clean score."""
    torch.manual_seed(0)
    sdtps = _randomise(SDTPS(C, 3, M, selection="gumbel"), seed=4).train(training)
    patches, guide = torch.randn(B, M, N, C), torch.randn(B, M, C)
    torch.manual_seed(1)
    out = sdtps(patches, guide)
    if training:
        assert out.soft_mask is not None
    else:
        assert out.soft_mask is None
        score = sdtps.scores(patches, guide)
        k = num_keep(N, sdtps.ratio)
        keep = score.topk(k, -1).indices
        torch.testing.assert_close(out.mask, torch.zeros(B, M, N).scatter_(-1, keep, 1.0))
