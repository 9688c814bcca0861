"""SDTPSNet and its factories (torchreid_sdtps/models/net.py) on a narrow ViT-tiny backbone."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from _bn import with_real_stats

import torchreid_sdtps  # noqa: F401  (registers the factories with torchreid)
from torchreid_sdtps import compat
from torchreid_sdtps.models.net import SDTPSNet, sdtps_clip_vit_b16, sdtps_vit_b16, sdtps_vit_tiny

NUM_CLASSES, B, M = 5, 4, 3
SMALL = dict(depth=1, embed_dim=48, num_heads=3)  # backbone overrides: a fast 1-block ViT, C=48
C = 48


def _model(loss: str = "softmax", img_size=(128, 64), **kw) -> SDTPSNet:
    torch.manual_seed(0)
    return sdtps_vit_tiny(NUM_CLASSES, loss=loss, pretrained=False, img_size=img_size, **{**SMALL, **kw})


def _x(img_size=(128, 64), b: int = B, m: int = M, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, m, 3, *img_size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- outputs
def test_train_softmax_returns_two_logits():
    out = _model("softmax").train()(_x())
    assert isinstance(out, list) and len(out) == 2
    assert all(o.shape == (B, NUM_CLASSES) for o in out)


def test_train_triplet_returns_logits_and_features():
    logits, feats = _model("triplet").train()(_x())
    assert [o.shape for o in logits] == [(B, NUM_CLASSES)] * 2
    assert [f.shape for f in feats] == [(B, M * C)] * 2  # [sdtps, ori], before the BNNeck


@pytest.mark.parametrize("test_feature, dim", [("concat", 2 * M * C), ("sdtps", M * C), ("ori", M * C)])
@pytest.mark.parametrize("loss", ["softmax", "triplet"])
def test_eval_returns_one_feature(test_feature, dim, loss):
    model = _model(loss, test_feature=test_feature).eval()
    with torch.no_grad():
        feat = model(_x())
    assert isinstance(feat, torch.Tensor) and feat.shape == (B, dim) == (B, model.feature_dim)


def test_concat_is_ori_then_sdtps_after_the_bn_by_default():
    x = _x()
    feats = {tf: with_real_stats(_model(test_feature=tf)).eval()(x).detach()
             for tf in ("concat", "sdtps", "ori")}
    torch.testing.assert_close(feats["concat"], torch.cat([feats["ori"], feats["sdtps"]], 1))
    model = with_real_stats(_model()).eval()
    raw = model.forward_features(x)
    torch.testing.assert_close(feats["ori"], model.neck_ori(raw["ori"]).detach())
    torch.testing.assert_close(feats["sdtps"], model.neck_sdtps(raw["sdtps"]).detach())
    before = with_real_stats(_model(neck_feat="before")).eval()(x).detach()
    torch.testing.assert_close(before, torch.cat([raw["ori"], raw["sdtps"]], 1).detach())
    assert (before - feats["concat"]).abs().max() > 0.5  # the neck matters with these stats


@pytest.mark.parametrize("selection", ["topk", "gumbel"])
def test_return_aux_in_training(selection):
    model = _model("triplet", selection=selection).train()
    torch.manual_seed(0)
    (logits, feats), aux = model(_x(), return_aux=True)
    n, k, n_c = 32, 16, 6  # 128x64 / 16 -> 8x4 grid; K = ceil(0.5 N); N_c = round(0.2 N)
    assert set(aux) == {"masks", "soft_masks", "scores", "tokens", "ratio", "global"}
    assert aux["masks"].shape == aux["scores"].shape == (B, M, n)
    assert aux["global"].shape == (B, M, C)  # the guides g' (the partial-match triplet's input)
    assert (aux["masks"].sum(-1) == k).all()
    assert aux["tokens"].shape == (B, M, n_c + 1, C)
    assert aux["ratio"] == 0.5 and isinstance(aux["ratio"], float)
    if selection == "gumbel":
        assert aux["soft_masks"].shape == (B, M, n) and aux["soft_masks"].requires_grad
    else:
        assert aux["soft_masks"] is None


def test_return_aux_in_eval_is_deterministic_even_for_gumbel():
    model = _model(selection="gumbel").eval()
    x = _x()
    with torch.no_grad():
        torch.manual_seed(1)
        f1, aux1 = model(x, return_aux=True)
        torch.manual_seed(2)
        f2, aux2 = model(x, return_aux=True)
    assert torch.equal(f1, f2) and torch.equal(aux1["masks"], aux2["masks"])
    assert aux1["soft_masks"] is None and f1.shape == (B, 2 * M * C)


def test_extract_exposes_per_modality_outputs():
    model = with_real_stats(_model()).eval()
    x = _x()
    with torch.no_grad():
        out = model.extract(x)
        feature = model(x)
    assert set(out) == {"global", "cls", "tokens", "masks", "scores", "feature"}
    assert out["global"].shape == out["cls"].shape == (B, M, C)
    assert out["tokens"].shape == (B, M, 7, C)
    assert out["masks"].shape == out["scores"].shape == (B, M, 32)
    torch.testing.assert_close(out["feature"], feature)
    torch.testing.assert_close(out["feature"][:, : M * C], model.neck_ori(out["global"].flatten(1)))


def test_one_backbone_call_on_all_modalities():
    model = _model()
    shapes = []
    model.backbone.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape)))
    model.eval()(_x())
    assert shapes == [(B * M, 3, 128, 64)]


def test_cam_label_is_repeated_per_modality():
    model = _model(num_cameras=2).eval()
    seen = []
    model.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[1]))
    x = _x()
    with torch.no_grad():
        f0 = model(x, cam_label=torch.zeros(B, dtype=torch.long))
        f1 = model(x, cam_label=torch.tensor([1, 0, 1, 0]))
    assert torch.equal(seen[1], torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]))
    assert not torch.allclose(f0[0], f1[0]) and torch.allclose(f0[1], f1[1])
    with pytest.raises(ValueError, match=r"cam_label must have shape \(4,\)"):
        model(x, cam_label=torch.zeros(3, dtype=torch.long))


def test_training_step_reaches_backbone_guide_and_sdtps():
    model = _model("triplet", selection="gumbel").train()
    logits, feats = model(_x())
    loss = sum(torch.nn.functional.cross_entropy(lg, torch.arange(B) % NUM_CLASSES) for lg in logits)
    (loss + sum(f.pow(2).mean() for f in feats)).backward()
    for name in ("backbone.vit.patch_embed.proj.weight", "guide.proj.weight",
                 "sdtps.score_mlp.fc1.weight", "sdtps.aggregate.weight.fc2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.neck_sdtps.bn.bias.grad is None  # BNNeck bias frozen


# ---------------------------------------------------------------- counts from the real grid (R9)
@pytest.mark.parametrize("img_size, n", [((128, 64), 32), ((96, 48), 18)])
@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_k_is_ceil_rho_n_for_each_input_size(img_size, n, ratio):
    model = _model(img_size=img_size, ratio=ratio).eval()
    assert model.backbone.num_patches == n
    with torch.no_grad():
        _, aux = model(_x(img_size, b=2), return_aux=True)
    assert aux["masks"].shape == (2, M, n)
    assert (aux["masks"].sum(-1) == math.ceil(ratio * n - 1e-9)).all()


@pytest.mark.parametrize("img_size, n_c", [((128, 64), 6), ((256, 128), 26), ((64, 32), 2)])
def test_num_aggregated_from_the_backbone_grid(img_size, n_c):
    model = _model(img_size=img_size)
    assert model.sdtps.num_aggr == n_c  # round(N * 0.5 * 0.4) with N = gh * gw of the real grid
    assert model.sdtps.num_aggr == max(1, math.floor(model.backbone.num_patches * 0.2 + 0.5))


def test_explicit_num_aggr_and_aggr_ratio():
    model = _model(num_aggr=4).eval()
    with torch.no_grad():
        assert model.extract(_x(b=2))["tokens"].shape == (2, M, 5, C)
    assert _model(aggr_ratio=0.25).sdtps.num_aggr == 4  # 32 * 0.5 * 0.25


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("shape", [(B, 1, 128, 64), (B, 2, 3, 128, 64), (B, M, 1, 128, 64),
                                   (B, M, 3, 64, 64)])
def test_bad_input_shape_names_the_expected_shape(shape):
    model = _model()
    with pytest.raises(ValueError, match=r"\(B, M, 3, H, W\) = \(B, 3, 3, 128, 64\)"):
        model(torch.zeros(shape))


def test_two_modalities_are_supported_and_checked():
    model = _model(num_modalities=2).eval()
    with torch.no_grad():
        assert model(_x(m=2)).shape == (B, 2 * 2 * C)
    with pytest.raises(ValueError, match=r"\(B, 2, 3, 128, 64\)"):
        model(_x(m=3))


@pytest.mark.parametrize("kw, match", [(dict(loss="arcface"), "unknown loss 'arcface'"),
                                       (dict(test_feature="cls"), "sdtps.test_feature must be one of"),
                                       (dict(neck_feat="middle"), "sdtps.neck_feat must be one of"),
                                       (dict(selection="soft"), "selection")])
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        _model(**kw)


@pytest.mark.parametrize("option", ["use_hdm", "HDM", "use_ATM", "atm_layers", "MoE_experts", "hdm_moe"])
def test_hdm_atm_moe_options_are_rejected(option):
    """R3: SDTPS replaces HDM/ATM; asking for them fails loudly (registered factory, class).
    (torchreid 0.2.5's ``build_model`` forwards no extra kwargs, so the factory is called.)"""
    with pytest.raises(ValueError, match="SDTPS replaces HDM/ATM in this project") as err:
        _model(**{option: True})
    assert option in str(err.value)
    with pytest.raises(ValueError, match="SDTPS replaces HDM/ATM"):
        compat.model_factory()["sdtps_vit_tiny"](NUM_CLASSES, pretrained=False, **{option: 1})
    with pytest.raises(ValueError, match="SDTPS replaces HDM/ATM"):
        SDTPSNet(_model().backbone, NUM_CLASSES, **{option: False})


def test_unknown_option_is_a_config_error_naming_it():
    from torchreid_sdtps.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['not_an_option'\]"):
        _model(not_an_option=1)
    with pytest.raises(ConfigError, match=r"unknown SDTPS model option\(s\) \['not_an_option'\]"):
        SDTPSNet(_model().backbone, NUM_CLASSES, not_an_option=1)


# ---------------------------------------------------------------- logging (R10)
def _records(caplog):
    return [r for r in caplog.records if r.name.startswith("torchreid_sdtps")]


def test_build_prints_nothing_and_logs_one_summary(capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="torchreid_sdtps")
    _model(selection="gumbel")
    assert capsys.readouterr() == ("", "")
    records = _records(caplog)
    assert len(records) == 1 and records[0].levelno == logging.INFO
    msg = records[0].getMessage()
    for part in ("params", "N=32", "K=16", "N_c=6", "selection=gumbel"):
        assert part in msg, msg
    caplog.clear()
    _model()
    assert len(_records(caplog)) == 1  # once per build, not once per module or per process


def test_no_summary_off_rank_zero(monkeypatch, capsys, caplog):
    monkeypatch.setenv("RANK", "1")
    caplog.set_level(logging.DEBUG, logger="torchreid_sdtps")
    _model()
    assert _records(caplog) == [] and capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- factories
def test_factories_are_registered_with_torchreid():
    factory = compat.model_factory()
    for fn in (sdtps_clip_vit_b16, sdtps_vit_b16, sdtps_vit_tiny):
        assert factory[fn.__name__] is fn
    model = compat.models().build_model("sdtps_vit_tiny", NUM_CLASSES, loss="triplet",
                                        pretrained=False, use_gpu=False)
    assert isinstance(model, SDTPSNet) and model.loss == "triplet"
    assert model.img_size == (128, 64) and model.backbone.out_dim == 192


@pytest.mark.parametrize("factory, width", [(sdtps_clip_vit_b16, 512), (sdtps_vit_b16, 768)])
def test_b16_factories_default_to_256x128(factory, width):
    torch.manual_seed(0)
    model = factory(NUM_CLASSES, pretrained=False, depth=1)  # one block keeps the test fast
    assert model.img_size == (256, 128) and model.backbone.num_patches == 128
    assert model.backbone.out_dim == width and model.sdtps.num_aggr == 26
    assert model.neck_sdtps.classifier.weight.shape == (NUM_CLASSES, 3 * width)


def test_pretrained_is_forwarded_to_the_backbone(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(Exception, match="nope.pth"):
        sdtps_vit_tiny(NUM_CLASSES, pretrained=str(missing), **SMALL)


# ---------------------------------------------------------------- ablation baseline without SDTPS
def test_use_sdtps_false_keeps_backbone_guide_and_ori_head_only():
    model = _model("triplet", use_sdtps=False)
    assert model.sdtps is None and model.neck_sdtps is None
    assert not any(n.startswith(("sdtps.", "neck_sdtps.")) for n, _ in model.named_parameters())
    full = _model("triplet")
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in full.sdtps.parameters()) + sum(p.numel() for p in full.neck_sdtps.parameters()))
    (logits, feats), aux = model.train()(_x(), return_aux=True)
    assert [o.shape for o in logits] == [(B, NUM_CLASSES)] and [f.shape for f in feats] == [(B, M * C)]
    assert aux["tokens"] is None and aux["masks"] is None and aux["soft_masks"] is None
    assert aux["ratio"] is None
    sum(o.sum() for o in logits).backward()  # trains end to end
    assert model.guide.proj.weight.grad is not None
    soft = _model("softmax", use_sdtps=False).train()(_x())
    assert isinstance(soft, list) and len(soft) == 1
    with_real_stats(model).eval()
    with torch.no_grad():
        feat = model(_x())
        torch.testing.assert_close(feat, model.neck_ori(model.forward_features(_x())["ori"]))
    assert feat.shape == (B, M * C) == (B, model.feature_dim)
    with pytest.raises(ValueError, match="use_sdtps"):
        _model(use_sdtps=False, test_feature="sdtps")
