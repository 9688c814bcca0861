"""The evaluation feature of SDTPSNet with *real* BatchNorm statistics (issue 27.2).

A fresh BatchNorm has running mean 0 and variance 1, so "after the neck" is the identity up to
1e-5 and a model that skips a neck still passes a default ``assert_close``. Here every BatchNorm
gets running statistics and affine parameters far from that, and each ``neck_feat`` x
``test_feature`` combination is compared with the BatchNorm formula written out by hand on the
raw branch features (``forward_features``), never with the model's own neck modules.
"""
from __future__ import annotations

import pytest
import torch
from _bn import with_real_stats

import torchreid_sdtps  # noqa: F401  (registers the factories with torchreid)
from torchreid_sdtps.models.net import sdtps_vit_tiny

NUM_CLASSES, B, M, C = 5, 4, 3, 48
SMALL = dict(depth=1, embed_dim=C, num_heads=3)


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = sdtps_vit_tiny(NUM_CLASSES, loss="triplet", pretrained=False, img_size=(64, 32),
                           **{**SMALL, **kw})
    return with_real_stats(model).eval()


def _bn(x: torch.Tensor, neck: torch.nn.Module) -> torch.Tensor:
    """BatchNorm1d in evaluation, by hand from the neck's tensors."""
    bn = neck.bn
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, M, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def _reference(model: torch.nn.Module, x: torch.Tensor, neck_feat: str, test_feature: str
               ) -> torch.Tensor:
    raw = model.forward_features(x)
    ori, sdtps = raw["ori"], raw["sdtps"]
    if neck_feat == "after":
        ori, sdtps = _bn(ori, model.neck_ori), _bn(sdtps, model.neck_sdtps)
    return {"ori": ori, "sdtps": sdtps, "concat": torch.cat([ori, sdtps], 1)}[test_feature]


@pytest.mark.parametrize("neck_feat", ["after", "before"])
@pytest.mark.parametrize("test_feature", ["concat", "sdtps", "ori"])
def test_eval_feature_matches_the_hand_written_neck(neck_feat, test_feature):
    model = _model(neck_feat=neck_feat, test_feature=test_feature)
    x = _x()
    with torch.no_grad():
        feat = model(x)
        ref = _reference(model, x, neck_feat, test_feature)
        other = _reference(model, x, "before" if neck_feat == "after" else "after", test_feature)
        extracted = model.extract(x)["feature"]
    assert feat.shape == (B, model.feature_dim)
    torch.testing.assert_close(feat, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(extracted, ref, rtol=1e-5, atol=1e-5)
    # the statistics make the two neck positions far apart, so the check above can fail
    assert (feat - other).abs().max() > 0.5


@pytest.mark.parametrize("neck_feat", ["after", "before"])
def test_eval_feature_without_sdtps_uses_the_ori_neck(neck_feat):
    model = _model(use_sdtps=False, neck_feat=neck_feat)
    x = _x(1)
    with torch.no_grad():
        feat = model(x)
        raw = model.forward_features(x)["ori"]
    ref = _bn(raw, model.neck_ori) if neck_feat == "after" else raw
    torch.testing.assert_close(feat, ref, rtol=1e-5, atol=1e-5)
    assert (_bn(raw, model.neck_ori) - raw).abs().max() > 0.5


def test_per_modality_ori_neck_normalises_each_channel():
    """DeMo's DIRECT=0 (one neck per modality): one BatchNorm over the concatenation is the
    per-modality BatchNorms side by side, so the hand formula holds channel by channel."""
    model = _model(ori_head="per_modality", test_feature="ori")
    x = _x(2)
    with torch.no_grad():
        feat = model(x)
        ref = _bn(model.forward_features(x)["ori"], model.neck_ori)
    torch.testing.assert_close(feat, ref, rtol=1e-5, atol=1e-5)


def test_training_batch_statistics_then_running_statistics():
    """A briefly 'trained' neck: training forwards update the running statistics with
    momentum 0.1 from the batch statistics of the raw features; evaluation then uses them."""
    model = _model(test_feature="sdtps")
    neck = model.neck_sdtps.bn
    mean0, var0 = neck.running_mean.clone(), neck.running_var.clone()
    x = _x(3)
    model.train()
    with torch.no_grad():
        raw = model.forward_features(x)["sdtps"]  # train-mode forward_features: no BN inside
        torch.manual_seed(5)
        model(x)
    m = neck.momentum
    torch.testing.assert_close(neck.running_mean, (1 - m) * mean0 + m * raw.mean(0))
    torch.testing.assert_close(neck.running_var, (1 - m) * var0 + m * raw.var(0, unbiased=True))
    model.eval()
    with torch.no_grad():
        feat = model(x)
        ref = (model.forward_features(x)["sdtps"] - neck.running_mean) / torch.sqrt(
            neck.running_var + neck.eps) * neck.weight + neck.bias
    torch.testing.assert_close(feat, ref, rtol=1e-5, atol=1e-5)
