"""Token-branch heads (models/heads.py, option ``sdtps.head``): shapes, gradients, checkpoints,
options (issue 23, Deliver 3)."""
from __future__ import annotations

import pytest
import torch
import yaml

from torchreid_sdtps import checkpoint as C
from torchreid_sdtps.errors import ConfigError
from torchreid_sdtps.models.heads import MeanHead, RefineHead, ResidualHead, build_head
from torchreid_sdtps.models.options import SDTPSOptions
from torchreid_sdtps.models.sdtps import SDTPS

torch.set_num_threads(1)


def _tiny(head: str, pretrained: bool = False, **kw):
    from torchreid_sdtps.models.net import sdtps_vit_tiny

    torch.manual_seed(0)
    return sdtps_vit_tiny(5, loss="triplet", pretrained=pretrained, img_size=(64, 32), head=head,
                          **kw)


@pytest.mark.parametrize("name", ["mean", "refine", "residual"])
def test_head_shapes(name):
    torch.manual_seed(0)
    head = build_head(name, 64, 3)
    tokens, guide = torch.randn(4, 3, 7, 64), torch.randn(4, 3, 64)
    assert head(tokens, guide).shape == (4, 3, 64)
    model = _tiny(name)
    x = torch.randn(4, 3, 3, 64, 32)
    logits, feats = model(x)
    assert [t.shape for t in logits] == [(4, 5), (4, 5)]
    assert [f.shape for f in feats] == [(4, 3 * 192), (4, 3 * 192)]
    model.eval()
    assert model(x).shape == (4, 2 * 3 * 192)


def test_mean_head_is_the_seed_review_form():
    tokens = torch.randn(2, 3, 5, 8)
    assert torch.equal(MeanHead()(tokens, torch.randn(2, 3, 8)), tokens.mean(dim=2))


def test_refine_head_is_vectorised_per_modality():
    """Modality m's output depends on modality m's tokens and guide only (stacked weights,
    modality folded into the batch), and every modality has its own weights."""
    torch.manual_seed(0)
    head = RefineHead(64, 3)
    tokens, guide = torch.randn(2, 3, 6, 64), torch.randn(2, 3, 64)
    out = head(tokens, guide)
    changed = tokens.clone()
    changed[:, 1] += 1.0
    out2 = head(changed, guide)
    assert torch.allclose(out[:, [0, 2]], out2[:, [0, 2]], atol=1e-6)
    assert not torch.allclose(out[:, 1], out2[:, 1])
    same = head(tokens[:, [0, 0, 0]], guide[:, [0, 0, 0]])  # one input, three weight sets
    assert not torch.allclose(same[:, 0], same[:, 1])
    with pytest.raises(ValueError, match="heads must divide"):
        RefineHead(64, 3, num_heads=5)


def test_refine_head_gradient_reaches_the_selected_tokens_and_the_guide():
    """Through the refining head, the retrieval feature's gradient reaches the guide, every
    enhanced token and, through TokenAggregation, every kept patch (not the dropped ones
    beyond the extra token's softmax weights)."""
    torch.manual_seed(0)
    b, m, n, c = 2, 3, 16, 64
    sdtps = SDTPS(c, num_aggr=3, num_modalities=m, ratio=0.5)
    head = RefineHead(c, m)
    patches = torch.randn(b, m, n, c, requires_grad=True)
    guide = torch.randn(b, m, c, requires_grad=True)
    out = sdtps(patches, guide)
    tokens = out.tokens.detach().requires_grad_(True)
    head(tokens, guide).square().sum().backward()
    assert guide.grad.abs().sum(-1).gt(0).all()
    assert tokens.grad.abs().sum(-1).gt(0).all()  # every [V̂, e] token of every modality
    patches.grad = None
    head(out.tokens, guide).square().sum().backward()
    kept = out.mask.bool()
    grad = patches.grad.abs().sum(-1)  # (B, M, N)
    assert grad[kept].gt(0).all()


def test_residual_head_starts_as_the_guide_and_leaves_it_untouched():
    """At initialisation the residual head returns the guide exactly (γ = 0); its own loss
    never reaches the guide (the residual is gradient-free), but does reach γ and, once γ is
    non-zero, every enhanced token of every modality (the correction reads all modalities)."""
    torch.manual_seed(0)
    head = ResidualHead(64, 3)
    tokens = torch.randn(2, 3, 5, 64, requires_grad=True)
    guide = torch.randn(2, 3, 64, requires_grad=True)
    out = head(tokens, guide)
    assert torch.equal(out, guide)
    out.square().sum().backward()
    assert guide.grad is None or not guide.grad.any()
    assert head.gamma.grad.abs().sum(-1).gt(0).all()  # every modality's scale learns
    with torch.no_grad():
        head.gamma.fill_(0.5)
    tokens.grad = None
    head(tokens, guide).square().sum().backward()
    assert tokens.grad.abs().sum(-1).gt(0).all()
    assert guide.grad is None or not guide.grad.any()


def test_residual_head_reads_every_modality_with_its_own_weights():
    """Modality m's correction depends on the other modalities' tokens too (cross-modal), and
    the three weight sets differ (stacked, one batched call)."""
    torch.manual_seed(0)
    head = ResidualHead(64, 3)
    with torch.no_grad():
        head.gamma.fill_(1.0)
        head.q.weight.normal_()
    tokens, guide = torch.randn(2, 3, 6, 64), torch.randn(2, 3, 64)
    out = head(tokens, guide)
    changed = tokens.clone()
    changed[:, 1] *= 3.0
    out2 = head(changed, guide)
    assert not torch.allclose(out[:, 0], out2[:, 0]) and not torch.allclose(out[:, 2], out2[:, 2])
    same = head(tokens, guide[:, [0, 0, 0]])  # one query, three weight sets
    assert not torch.allclose(same[:, 0], same[:, 1])
    with pytest.raises(ValueError, match="heads must divide"):
        ResidualHead(64, 3, num_heads=5)


def test_checkpoint_records_the_head_and_round_trips(tmp_path):
    from conftest import tiny_cfg

    from torchreid_sdtps import build
    from torchreid_sdtps.deploy import FeatureExtractor

    cfg = tiny_cfg(tmp_path / "data", tmp_path / "log", "sdtps.head", "refine")
    dm = build.build_datamanager(cfg)
    model = build.build_model(cfg, dm)
    assert isinstance(model.head, RefineHead)
    meta = C.meta_of(model)
    assert meta["model_kwargs"]["head"] == "refine"
    path = C.Checkpointer(str(tmp_path)).save({"state_dict": model.state_dict(), "epoch": 1},
                                              "m", meta=meta)
    extractor = FeatureExtractor(path)
    assert isinstance(extractor.model.head, RefineHead)
    for key, value in model.state_dict().items():
        assert torch.equal(extractor.model.state_dict()[key], value), key


def test_checkpoint_without_the_head_field_loads_with_the_mean_head(tmp_path):
    """A checkpoint written before ``sdtps.head`` existed holds the mean head: its meta is read
    with an explicit ``head: mean`` (whatever today's default) and it rebuilds and loads."""
    from conftest import tiny_cfg

    from torchreid_sdtps import build
    from torchreid_sdtps.deploy import FeatureExtractor

    cfg = tiny_cfg(tmp_path / "data", tmp_path / "log")
    dm = build.build_datamanager(cfg)
    model = build.build_model(cfg, dm)
    meta = dict(C.meta_of(model))
    meta["model_kwargs"] = {k: v for k, v in meta["model_kwargs"].items() if k != "head"}
    tree = yaml.safe_load(meta["config"])
    del tree["sdtps"]["head"]
    meta["config"] = yaml.safe_dump(tree)
    path = C.Checkpointer(str(tmp_path)).save({"state_dict": model.state_dict(), "epoch": 1},
                                              "old", meta=meta)
    upgraded = C.checkpoint_meta(C.read_checkpoint(path))
    assert upgraded["model_kwargs"]["head"] == "mean"
    assert yaml.safe_load(upgraded["config"])["sdtps"]["head"] == "mean"
    extractor = FeatureExtractor(path)
    assert isinstance(extractor.model.head, MeanHead)
    for key, value in model.state_dict().items():
        assert torch.equal(extractor.model.state_dict()[key], value), key


def test_head_and_patch_size_options_are_validated():
    with pytest.raises(ConfigError, match=r"sdtps.head must be one of \['mean', 'refine', 'residual'\]"):
        SDTPSOptions(head="attention")
    with pytest.raises(ConfigError, match="sdtps.patch_size=0"):
        SDTPSOptions(patch_size=0)
    from torchreid_sdtps.config import load_config, model_options

    cfg = load_config(opts=["sdtps.head", "refine", "sdtps.patch_size", "8"], demo=True)
    assert model_options(cfg).head == "refine" and model_options(cfg).patch_size == 8
    with pytest.raises(ConfigError, match="differs from the pretrained"):
        _tiny("mean", patch_size=8, pretrained=True)


def test_patch_size_option_sets_the_grid():
    model = _tiny("mean", patch_size=8)
    assert model.backbone.num_patches == (64 // 8) * (32 // 8)
    assert model.sdtps.num_aggr == round(32 * 0.5 * 0.4)


@pytest.mark.parametrize("name,cls", [("refine", RefineHead), ("residual", ResidualHead)])
def test_attention_heads_export_to_onnx_with_parity(tmp_path, name, cls):
    """The attention heads (stacked weights, one scaled-dot-product attention; the residual
    head's cross-modal token expansion) export to ONNX and pass the export's own parity check
    on the checkpoint's data."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from _deploy import tiny_checkpoint

    from torchreid_sdtps.cli.export import main as main_export

    _, _, engine, ckpt = tiny_checkpoint(tmp_path, tmp_path / "log", "sdtps.head", name)
    assert isinstance(engine.model.head, cls)
    summary = main_export(["--weights", ckpt, "-o", str(tmp_path / f"{name}.onnx")])
    assert (tmp_path / f"{name}.onnx").is_file()
    assert summary
