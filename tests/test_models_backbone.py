"""ViTBackbone: variant sizes, output shapes, SIE camera embedding, input checks."""
import logging

import pytest
import torch
from timm.layers import QuickGELU
from torch import nn

from torchreid_sdtps.models.backbone import VARIANTS, ViTBackbone
from torchreid_sdtps.models.factory import build_backbone

torch.set_num_threads(1)
SMALL = dict(embed_dim=64, depth=2, num_heads=2)  # narrow copies of the named variants


def _small(variant="vit_tiny", img_size=(64, 32), **kw):
    torch.manual_seed(0)
    return build_backbone(variant, img_size=img_size, **dict(SMALL, **kw)).eval()


@pytest.mark.parametrize("variant,width,depth,heads,out_dim,grid", [
    ("clip_vit_b16", 768, 12, 12, 512, (16, 8)),
    ("vit_b16", 768, 12, 12, 768, (16, 8)),
    ("vit_tiny", 192, 4, 3, 192, (8, 4)),
])
def test_named_variants_have_real_sizes(variant, width, depth, heads, out_dim, grid):
    m = build_backbone(variant, device="meta")  # meta: sizes without allocating 86M params
    assert (m.width, len(m.vit.blocks), m.vit.blocks[0].attn.num_heads) == (width, depth, heads)
    assert m.out_dim == out_dim and m.grid_size == grid and m.num_patches == grid[0] * grid[1]
    assert m.patch_size == 16 and m.vit.cls_token is not None
    assert m.img_size == ((128, 64) if variant == "vit_tiny" else (256, 128))
    assert isinstance(m.vit.fc_norm, nn.Identity) and isinstance(m.vit.head, nn.Identity)
    if variant == "clip_vit_b16":  # OpenAI CLIP tower: ln_pre, quick-GELU, eps 1e-5, bias-free conv1
        assert isinstance(m.vit.norm_pre, nn.LayerNorm) and m.vit.norm_pre.eps == 1e-5
        assert isinstance(m.vit.blocks[0].mlp.act, QuickGELU)
        assert m.vit.patch_embed.proj.bias is None
        assert tuple(m.proj.weight.shape) == (512, 768)
    else:
        assert isinstance(m.vit.norm_pre, nn.Identity) and isinstance(m.proj, nn.Identity)
        assert isinstance(m.vit.blocks[0].mlp.act, nn.GELU) and m.vit.norm.eps == 1e-6


def test_vit_b16_parameter_count():
    n = sum(p.numel() for p in build_backbone("vit_b16", device="meta").parameters())
    assert 85.5e6 < n < 86.0e6  # ViT-B/16 without classifier at a 16x8 grid


@pytest.mark.parametrize("variant", ["clip_vit_b16", "vit_b16", "vit_tiny"])
@pytest.mark.parametrize("hw", [(64, 32), (96, 48)])
def test_output_shapes(variant, hw):
    m = _small(variant, img_size=hw, proj_dim=32) if variant == "clip_vit_b16" else _small(variant, img_size=hw)
    n = (hw[0] // 16) * (hw[1] // 16)
    assert m.grid_size == (hw[0] // 16, hw[1] // 16) and m.num_patches == n
    cls, patches = m(torch.randn(3, 3, *hw))
    c = 32 if variant == "clip_vit_b16" else 64
    assert m.out_dim == c
    assert cls.shape == (3, c) and patches.shape == (3, n, c)
    assert torch.isfinite(cls).all() and torch.isfinite(patches).all()


def test_clip_projection_applies_to_every_token():
    m = _small("clip_vit_b16", proj_dim=32)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        tokens = m.vit.forward_features(x)  # timm's own forward (no SIE): final norm, no proj
        cls, patches = m(x)
    ref = tokens @ m.proj.weight.T
    assert torch.allclose(cls, ref[:, 0], atol=1e-6) and torch.allclose(patches, ref[:, 1:], atol=1e-6)


def test_sie_changes_output_only_with_cam_label():
    base = _small()
    sie = _small(num_cameras=3)
    missing, unexpected = sie.load_state_dict(base.state_dict(), strict=False)
    assert missing == ["sie_embed"] and unexpected == []
    x = torch.randn(4, 3, 64, 32)
    cams = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        ref_cls, ref_p = base(x)
        none_cls, none_p = sie(x)  # no camera term without cam_label
        cam_cls, cam_p = sie(x, cams)
        cam_cls2, _ = sie(x, torch.tensor([2, 1, 0, 1]))
        ignored_cls, _ = base(x, cams)  # num_cameras=0 ignores cam_label
    assert torch.equal(none_cls, ref_cls) and torch.equal(none_p, ref_p)
    assert torch.equal(ignored_cls, ref_cls)
    assert not torch.allclose(cam_cls, ref_cls, atol=1e-4) and not torch.allclose(cam_p, ref_p, atol=1e-4)
    assert torch.allclose(cam_cls[1], cam_cls2[1], atol=1e-6) and torch.allclose(cam_cls[3], cam_cls2[3], atol=1e-6)
    assert not torch.allclose(cam_cls[0], cam_cls2[0], atol=1e-4)  # camera 0 vs camera 2
    # The camera term is sie_coe * sie_embed[cam] added to every token with the position embedding.
    with torch.no_grad():
        t = sie.vit._pos_embed(sie.vit.patch_embed(x)) + sie.sie_coe * sie.sie_embed[cams]
        ref = sie.vit.norm(sie.vit.blocks(sie.vit.norm_pre(t)))
    assert torch.allclose(cam_cls, ref[:, 0], atol=1e-6)


def test_sie_init_and_gradient():
    m = _small(num_cameras=5, sie_coe=2.0)
    assert m.sie_embed.shape == (5, 1, 64) and m.sie_coe == 2.0
    assert 0 < m.sie_embed.std() < 0.05  # trunc-normal std 0.02
    m.train()
    cls, patches = m(torch.randn(2, 3, 64, 32), torch.tensor([1, 4]))
    (cls.sum() + patches.sum()).backward()
    g = m.sie_embed.grad
    assert g[1].abs().sum() > 0 and g[4].abs().sum() > 0 and g[0].abs().sum() == 0


@pytest.mark.parametrize("cams", [[0, 3], [-1, 0]])
def test_cam_label_out_of_range(cams):
    m = _small(num_cameras=3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        m(torch.randn(2, 3, 64, 32), torch.tensor(cams))


def test_cam_label_bad_shape_and_dtype():
    m = _small(num_cameras=3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        m(torch.randn(2, 3, 64, 32), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        m(torch.randn(2, 3, 64, 32), torch.tensor([0.0, 1.0]))


def test_bad_input_and_arguments():
    m = _small()
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 32\)"):
        m(torch.randn(2, 3, 32, 64))
    with pytest.raises(ValueError, match="unknown backbone variant"):
        build_backbone("resnet50")
    with pytest.raises(TypeError, match="sdtps_ratio"):
        build_backbone("vit_tiny", sdtps_ratio=0.5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_backbone("vit_tiny", img_size=(100, 64), **SMALL)
    with pytest.raises(ValueError, match="num_cameras"):
        build_backbone("vit_tiny", num_cameras=-1, **SMALL)


def test_construction_is_silent(caplog, capsys):
    with caplog.at_level(logging.DEBUG):
        m = ViTBackbone("clip_vit_b16", img_size=(64, 32), num_cameras=2, proj_dim=16, **SMALL)
        m(torch.randn(1, 3, 64, 32), torch.tensor([1]))
    assert not [r for r in caplog.records if r.name.startswith("torchreid_sdtps")]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_grad_checkpointing_same_output():
    m = _small(drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 32)
    ref = m(x)[1]
    m.set_grad_checkpointing(True)
    assert torch.allclose(m(x)[1], ref, atol=1e-6)


def test_variant_registry_lists_all():
    assert set(VARIANTS) == {"clip_vit_b16", "vit_b16", "vit_tiny"}


# ----------------------------------------------------------------------------- DeMo's CLIP path
def _drop_paths(m):
    return [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.vit.blocks] + \
        [getattr(b.drop_path2, "drop_prob", 0.0) for b in m.vit.blocks]


def test_clip_has_no_drop_path_imagenet_vit_keeps_demos():
    """DeMo passes MODEL.DROP_PATH (0.1) to its ImageNet ViT only; its CLIP tower has none."""
    clip = _small("clip_vit_b16", proj_dim=32)
    assert clip.drop_path_rate == 0.0 and all(isinstance(b.drop_path1, nn.Identity) and
                                              isinstance(b.drop_path2, nn.Identity)
                                              for b in clip.vit.blocks)
    for variant in ("vit_b16", "vit_tiny"):  # TransReID's linear rule up to 0.1 on the last block
        m = _small(variant)
        assert m.drop_path_rate == pytest.approx(0.1)
        assert max(_drop_paths(m)) == pytest.approx(0.1) and _drop_paths(m)[0] == 0.0
    explicit = _small("clip_vit_b16", proj_dim=32, drop_path_rate=0.2)  # an explicit value is used
    assert max(_drop_paths(explicit)) == pytest.approx(0.2)
    assert build_backbone("clip_vit_b16", device="meta", drop_path_rate=None).drop_path_rate == 0.0
    with pytest.raises(ValueError, match="drop_path_rate"):
        _small(drop_path_rate=1.5)


def _camera_shift(m, cams):
    """The token tensor entering norm_pre with and without camera labels: their difference."""
    seen = []
    hook = m.vit.norm_pre.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    x = torch.randn(len(cams), 3, 64, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        m(x)
        m(x, torch.tensor(cams))
    hook.remove()
    return seen[1] - seen[0]


def test_sie_on_the_class_token_only_for_clip():
    """DeMo's CLIP tower: x[:, 0] = x[:, 0] + cv_emb (before the position embedding); the
    patch tokens that SDTPS scores carry no camera term."""
    m = _small("clip_vit_b16", proj_dim=32, num_cameras=3, sie_coe=1.0, drop_path_rate=0.0)
    assert m.sie_tokens == "cls"
    cams = [0, 2, 1]
    shift = _camera_shift(m, cams)
    assert torch.allclose(shift[:, 0], m.sie_coe * m.sie_embed[cams, 0].detach(), atol=1e-6)
    assert torch.count_nonzero(shift[:, 1:]) == 0


@pytest.mark.parametrize("variant", ["vit_b16", "vit_tiny"])
def test_sie_on_every_token_for_the_imagenet_vit(variant):
    """TransReID's form, kept for DeMo's ImageNet ViT: the camera term on every token."""
    m = _small(variant, num_cameras=3, drop_path_rate=0.0)
    assert m.sie_tokens == "all"
    cams = [0, 2, 1]
    shift = _camera_shift(m, cams)
    ref = (m.sie_coe * m.sie_embed[cams].detach()).expand_as(shift)
    assert torch.allclose(shift, ref, atol=1e-5)
    both = _small(variant, num_cameras=3, sie_tokens="cls")  # the other form on request
    assert torch.count_nonzero(_camera_shift(both, cams)[:, 1:]) == 0
    with pytest.raises(ValueError, match="sie_tokens"):
        _small(variant, num_cameras=3, sie_tokens="patches")
