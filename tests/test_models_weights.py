"""Pretrained weights: every real key format round-trips exactly (the tiny source models of
``_weights``: an OpenAI CLIP model saved as a plain state dict and as a TorchScript archive; a
timm state dict; a Google/timm JAX ``.npz`` written with numpy under the names timm's
``_load_weights`` reads). Download, bad files and unsafe pickles: test_models_weights_files.py.
"""
import logging

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from _weights import (
    HEADS,
    PROJ,
    SMALL,
    SRC,
    C,
    X,
    _clip_backbone,
    _jitter,
    _OpenAICLIP,
    _timm_tokens,
    _tokens,
    _vit_backbone,
)
from timm.layers import resample_abs_pos_embed

from torchreid_sdtps.models import weights as W
from torchreid_sdtps.models.factory import build_backbone

torch.set_num_threads(1)
# torch.jit.trace writes the TorchScript fixtures (the format OpenAI publishes); its deprecation
# and tracer notices are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]



def test_openai_plain_state_dict_exact(openai_src, tmp_path):
    path = tmp_path / "clip_sd.pt"
    torch.save(openai_src.state_dict(), path)
    m = _clip_backbone(pretrained=str(path))
    with torch.no_grad():
        ref = openai_src(X)
    assert torch.allclose(_tokens(m, X), ref, atol=1e-6)


def test_openai_jit_archive_exact(openai_src, tmp_path, caplog):
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(openai_src, X).save(str(path))
    assert W.read_weights(str(path))[0] == "jit"
    with caplog.at_level(logging.INFO, logger="torchreid_sdtps"):
        m = _clip_backbone(pretrained=str(path))
    with torch.no_grad():
        ref = openai_src(X)
    assert torch.allclose(_tokens(m, X), ref, atol=1e-6)
    msgs = [r.getMessage() for r in caplog.records
            if r.name.startswith("torchreid_sdtps.models.weights")]
    assert len(msgs) == 1 and "openai-clip" in msgs[0]  # one summary line, nothing missing


def test_openai_fp16_visual_only_state_dict(openai_src, tmp_path):
    # OpenAI archives hold fp16 weights; also accept the visual tower saved on its own.
    half = {k: v.half() for k, v in openai_src.visual.state_dict().items()}
    path = tmp_path / "visual_fp16.pth"
    torch.save(half, path)
    ref_model = _jitter(_OpenAICLIP())
    ref_model.visual.load_state_dict({k: v.float() for k, v in half.items()})
    m = _clip_backbone(pretrained=str(path))
    assert m.proj.weight.dtype == torch.float32
    with torch.no_grad():
        ref = ref_model(X)
    assert torch.allclose(_tokens(m, X), ref, atol=1e-6)


@pytest.mark.parametrize("hw,grid", [((64, 32), (4, 2)), ((96, 48), (6, 3))])
def test_openai_resamples_pos_embed(openai_src, tmp_path, hw, grid):
    path = tmp_path / "clip_sd.pt"
    torch.save(openai_src.state_dict(), path)
    m = _clip_backbone(hw, pretrained=str(path))
    assert m.grid_size == grid and m.vit.pos_embed.shape == (1, grid[0] * grid[1] + 1, C)
    src = openai_src.visual.positional_embedding.detach()[None]
    # DeMo's CLIP resize_pos_embed, written out: plain bilinear on the square grid, the class
    # position untouched (timm's default would be bicubic with antialias)
    grid_src = src[0, 1:].reshape(1, 4, 4, C).permute(0, 3, 1, 2)
    grid_new = F.interpolate(grid_src, size=grid, mode="bilinear").permute(0, 2, 3, 1)
    ref = torch.cat([src[:, :1], grid_new.reshape(1, -1, C)], dim=1)
    assert torch.allclose(m.vit.pos_embed, ref, atol=1e-6)
    bicubic = resample_abs_pos_embed(src, new_size=list(grid), old_size=[4, 4], num_prefix_tokens=1)
    assert not torch.allclose(m.vit.pos_embed, bicubic, atol=1e-4)
    assert torch.equal(m.vit.pos_embed[0, 0], src[0, 0])  # class position kept as is
    cls, patches = m(torch.randn(1, 3, *hw))
    assert patches.shape == (1, grid[0] * grid[1], PROJ)


# ----------------------------------------------------------------------------- timm layouts

def test_timm_state_dict_wrapped_exact(timm_src, tmp_path, caplog):
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in timm_src.state_dict().items()}, "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="torchreid_sdtps"):
        m = _vit_backbone(pretrained=str(path))
    assert torch.allclose(_tokens(m, X), _timm_tokens(timm_src, X), atol=1e-6)
    text = caplog.text
    assert "dropped classifier head (10, 64)" in text and "missing" not in text and "unexpected" not in text


def test_timm_model_key_and_resample(timm_src, tmp_path):
    path = tmp_path / "timm_model.pth"
    torch.save({"model": timm_src.state_dict()}, path)
    m = _vit_backbone(hw=(96, 32), pretrained=str(path))
    ref = resample_abs_pos_embed(timm_src.pos_embed.detach(), new_size=[6, 2], old_size=[4, 4])
    assert m.grid_size == (6, 2) and torch.allclose(m.vit.pos_embed, ref, atol=1e-6)


def _timm_to_npz(model, path):
    """Write ``model`` as a Google/timm JAX .npz under the names timm's ``_load_weights`` reads."""
    def t(x):
        return x.detach().numpy()
    heads, hd = model.blocks[0].attn.num_heads, model.embed_dim // model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": t(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),  # HWIO
        "embedding/bias": t(model.patch_embed.proj.bias),
        "cls": t(model.cls_token),
        "Transformer/posembed_input/pos_embedding": t(model.pos_embed),
        "Transformer/encoder_norm/scale": t(model.norm.weight),
        "Transformer/encoder_norm/bias": t(model.norm.bias),
        "head/kernel": t(model.head.weight.T),
        "head/bias": t(model.head.bias),
    }
    for i, b in enumerate(model.blocks):
        p, a = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = t(b.norm1.weight), t(b.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = t(b.norm2.weight), t(b.norm2.bias)
        for name, wt, bs in zip(("query", "key", "value"), b.attn.qkv.weight.chunk(3), b.attn.qkv.bias.chunk(3)):
            w[a + name + "/kernel"] = t(wt.T.reshape(-1, heads, hd))
            w[a + name + "/bias"] = t(bs.reshape(heads, hd))
        w[a + "out/kernel"] = t(b.attn.proj.weight.reshape(-1, heads, hd).permute(1, 2, 0))
        w[a + "out/bias"] = t(b.attn.proj.bias)
        for r, fc in enumerate((b.mlp.fc1, b.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = t(fc.weight.T)
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = t(fc.bias)
    np.savez(path, **w)


def test_timm_npz_exact(timm_src, tmp_path):
    path = str(tmp_path / "augreg_tiny.npz")
    _timm_to_npz(timm_src, path)
    assert W.read_weights(path)[0] == "npz"
    m = _vit_backbone(pretrained=path)
    assert torch.allclose(_tokens(m, X), _timm_tokens(timm_src, X), atol=1e-6)


def test_timm_npz_resamples_and_truncates(tmp_path, caplog):
    torch.manual_seed(4)
    src = _jitter(timm.create_model("vit_tiny_patch16_224", img_size=SRC, embed_dim=C, depth=3, num_heads=HEADS))
    path = str(tmp_path / "deeper.npz")
    _timm_to_npz(src, path)
    with caplog.at_level(logging.INFO, logger="torchreid_sdtps"):
        m = build_backbone("vit_tiny", img_size=(96, 32), pretrained=path, **SMALL)  # depth 2 < 3
    assert "checkpoint has 3 blocks, using the first 2" in caplog.text and "resampled 4x4 -> 6x2" in caplog.text
    for mine, theirs in zip(m.vit.blocks, src.blocks):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    ref = resample_abs_pos_embed(src.pos_embed.detach(), new_size=[6, 2], interpolation="bilinear",
                                 antialias=False)  # what timm's _load_weights uses for .npz
    assert torch.allclose(m.vit.pos_embed, ref, atol=1e-6)


def test_state_dict_truncates_depth(timm_src, tmp_path):
    path = tmp_path / "timm.pth"
    torch.save(timm_src.state_dict(), path)
    m = build_backbone("vit_tiny", img_size=(SRC, SRC), pretrained=str(path), embed_dim=C, depth=1, num_heads=HEADS)
    assert torch.equal(m.vit.blocks[0].attn.qkv.weight, timm_src.blocks[0].attn.qkv.weight)
    assert torch.equal(m.vit.norm.weight, timm_src.norm.weight)


def test_backbone_checkpoint_roundtrip_non_square(tmp_path):
    a = build_backbone("clip_vit_b16", img_size=(64, 32), num_cameras=2, proj_dim=PROJ, **SMALL).eval()
    _jitter(a)
    path = tmp_path / "backbone.pth"
    torch.save(a.state_dict(), path)
    b = build_backbone("clip_vit_b16", img_size=(64, 32), num_cameras=2, proj_dim=PROJ,
                       pretrained=str(path), **SMALL).eval()
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(torch.cat([a(x, cams)[1], a(x)[1]]), torch.cat([b(x, cams)[1], b(x)[1]]))
    c = build_backbone("clip_vit_b16", img_size=(96, 32), proj_dim=PROJ, **SMALL)  # 4x2 -> 6x2
    with pytest.raises(W.WeightsFormatError, match="src_grid"):
        W.load_pretrained(c, str(path))
    W.load_pretrained(c, str(path), src_grid=(4, 2))
    assert c.vit.pos_embed.shape == (1, 13, C)


def test_missing_and_unexpected_keys_logged_once(timm_src, tmp_path, caplog):
    sd = dict(timm_src.state_dict(), **{"foo.bar": torch.zeros(3)})
    path = tmp_path / "timm_extra.pth"
    torch.save(sd, path)
    m = _clip_backbone(num_cameras=2)  # CLIP wants ln_pre and proj, an ImageNet file has neither
    with caplog.at_level(logging.INFO, logger="torchreid_sdtps"):
        W.load_pretrained(m, str(path))
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 2
    assert "missing" in warn[0] and "vit.norm_pre.weight" in warn[0] and "proj.weight" in warn[0]
    assert "sie_embed" not in warn[0]
    assert "unexpected" in warn[1] and "vit.foo.bar" in warn[1]
