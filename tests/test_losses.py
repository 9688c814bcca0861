"""SelectionRatioLoss and CrossModalAlignmentLoss: values, gradients, edge cases."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import torchreid_sdtps
from torchreid_sdtps import compat, plugins
from torchreid_sdtps.losses import CrossModalAlignmentLoss, SelectionRatioLoss, pair_similarity


def _tokens(num_ids: int = 4, per_id: int = 2, m: int = 3, t: int = 5, c: int = 16,
            noise: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens where every modality of an identity is a noisy copy of one identity pattern."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    base = torch.randn(num_ids, t, c, generator=g)
    tok = base[pids][:, None].expand(-1, m, -1, -1) + noise * torch.randn(
        len(pids), m, t, c, generator=g)
    return tok.contiguous(), pids


def _shuffle_modalities(tok: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Permute the samples independently in every modality but the first (breaks alignment)."""
    g = torch.Generator().manual_seed(seed)
    out = tok.clone()
    for m in range(1, tok.shape[1]):
        out[:, m] = tok[torch.randperm(tok.shape[0], generator=g), m]
    return out


def _reference(tokens: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """Loop form of the documented formula (all ordered modality pairs, row anchors)."""
    b, m = tokens.shape[:2]
    t = F.normalize(tokens.double(), dim=-1)
    total, count = 0.0, 0
    for a, bb in itertools.permutations(range(m), 2):
        s = torch.empty(b, b, dtype=torch.double)
        for i, j in itertools.product(range(b), range(b)):
            sim = F.leaky_relu(t[i, a] @ t[j, bb].T, 0.1)
            s[i, j] = sim.max(1).values.mean() + sim.max(0).values.mean()
        for i in range(b):
            neg = s[i][pids != pids[i]]
            if len(neg) == 0:
                continue
            for j in range(b):
                if pids[j] == pids[i]:
                    total = total + torch.relu(margin - s[i, j] + neg.max())
        count += int((pids[:, None] == pids[None]).sum())
    return total / count


def test_alignment_lower_for_aligned_than_shuffled_tokens_and_grad_reaches_tokens():
    tok, pids = _tokens()
    loss = CrossModalAlignmentLoss(margin=0.2)
    aligned = loss(tok, pids)
    shuffled = _shuffle_modalities(tok).requires_grad_(True)
    value = loss(shuffled, pids)
    assert aligned.item() < 0.5 * value.item(), (aligned.item(), value.item())
    value.backward()
    grad = shuffled.grad
    assert grad is not None and torch.isfinite(grad).all()
    for m in range(tok.shape[1]):  # every modality's tokens receive gradient
        assert grad[:, m].abs().sum() > 0, m
    # a gradient step on the tokens lowers the loss
    stepped = (shuffled - 0.5 * grad).detach()
    assert loss(stepped, pids).item() < value.item()


def test_alignment_matches_the_loop_reference():
    tok, pids = _tokens(num_ids=3, per_id=2, m=3, t=4, c=8, noise=1.0, seed=3)
    pids = torch.tensor([0, 0, 1, 2, 2, 1])
    got = CrossModalAlignmentLoss(margin=0.3, center=False)(tok, pids)
    want = _reference(tok, pids, 0.3)
    assert torch.allclose(got.double(), want, atol=1e-5), (float(got), float(want))
    # centring = the same formula on tokens minus each modality's batch-mean token
    centred = CrossModalAlignmentLoss(margin=0.3)(tok, pids)
    want = _reference(tok - tok.mean(dim=(0, 2), keepdim=True), pids, 0.3)
    assert torch.allclose(centred.double(), want, atol=1e-5)


def test_centring_removes_the_shared_offset_shortcut():
    """A large offset shared by all tokens drives the literal loss to ``margin`` whatever the
    identities (the collapse seen in training); the centred loss ignores it."""
    tok, pids = _tokens(noise=1.0)
    shuffled = _shuffle_modalities(tok)
    offset = 50.0 * torch.randn(1, 1, 1, tok.shape[-1])
    literal = CrossModalAlignmentLoss(margin=0.2, center=False)
    centred = CrossModalAlignmentLoss(margin=0.2)
    for t in (tok, shuffled):
        assert literal(t + offset, pids).item() == pytest.approx(0.2, abs=0.01)
        assert centred(t + offset, pids).item() == pytest.approx(centred(t, pids).item(),
                                                                 abs=1e-4)
    assert centred(tok, pids).item() < 0.5 * centred(shuffled, pids).item()


def test_pair_similarity_is_bidirectional_max_mean():
    tok, _ = _tokens(num_ids=2, per_id=1, m=2, t=3, c=4, noise=1.0)
    s = pair_similarity(tok)
    assert s.shape == (1, 2, 2)
    t = F.normalize(tok, dim=-1)
    a = F.leaky_relu(t[0, 0] @ t[1, 1].T, 0.1)
    assert torch.allclose(s[0, 0, 1], a.max(1).values.mean() + a.max(0).values.mean())
    # identical token sets score the maximum 2
    same = torch.stack([tok[:, 0], tok[:, 0]], dim=1)
    assert torch.allclose(torch.diagonal(pair_similarity(same)[0]), torch.full((2,), 2.0))


def test_alignment_without_negatives_is_zero_and_bad_shapes_fail():
    tok, _ = _tokens(num_ids=1, per_id=4)
    tok.requires_grad_(True)
    out = CrossModalAlignmentLoss()(tok, torch.zeros(4, dtype=torch.long))
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match=r"\(B, M, T, C\)"):
        CrossModalAlignmentLoss()(tok[0], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="pids"):
        CrossModalAlignmentLoss()(tok, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="2 modalities"):
        CrossModalAlignmentLoss()(tok[:, :1], torch.zeros(4, dtype=torch.long))


def test_ratio_loss_formula_and_topk_zero():
    loss = SelectionRatioLoss(ratio=0.5)
    soft = torch.full((2, 3, 10), 0.8, requires_grad=True)
    value = loss(soft)
    assert torch.isclose(value, torch.tensor(0.09))
    value.backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    zero = loss(None)
    assert float(zero) == 0.0 and not zero.requires_grad and zero.grad_fn is None
    assert torch.isclose(loss(torch.full((1, 1, 4), 0.25), ratio=0.75), torch.tensor(0.25))
    with pytest.raises(ValueError, match="ratio"):
        SelectionRatioLoss(ratio=0.0)


def _tiny_model(selection: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return compat.model_factory()["sdtps_vit_tiny"](
        num_classes=4, loss="triplet", pretrained=False, img_size=(32, 32),
        selection=selection, ratio=0.5)


@pytest.mark.parametrize("selection", ["topk", "gumbel"])
def test_ratio_loss_on_model_masks(selection):
    """Top-K: no soft mask, loss exactly 0 without a graph. Gumbel: non-zero, and its gradient
    reaches the scoring MLP through the soft mask."""
    model = _tiny_model(selection).train()
    x = torch.randn(2, 3, 3, 32, 32)
    _, aux = model(x, return_aux=True)
    loss = SelectionRatioLoss()(aux["soft_masks"], ratio=aux["ratio"])
    if selection == "topk":
        assert aux["soft_masks"] is None
        assert float(loss) == 0.0 and not loss.requires_grad
        return
    assert aux["soft_masks"].shape == aux["masks"].shape
    assert loss.item() > 0 and loss.requires_grad
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("sdtps")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_losses_are_registered():
    torchreid_sdtps.register()
    assert plugins.get_loss("selection_ratio") is SelectionRatioLoss
    assert plugins.get_loss("cross_modal_alignment") is CrossModalAlignmentLoss
