"""Pretrained weights: every real key format round-trips exactly; download/cache; bad files.

Tiny checkpoints are written in each published layout: an OpenAI CLIP model (a small copy of
openai/CLIP `clip/model.py`'s VisionTransformer, with text-tower keys beside it) saved as a
plain state dict and as a TorchScript archive; a timm state dict; a Google/timm JAX ``.npz``
written with numpy under the names timm's ``_load_weights`` reads.
"""
import logging
import os
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from torchreid_sdtps.models import weights as W
from torchreid_sdtps.models.factory import build_backbone

torch.set_num_threads(1)
# torch.jit.trace writes the TorchScript fixtures (the format OpenAI publishes); its deprecation
# and tracer notices are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]
C, DEPTH, HEADS, PROJ = 64, 2, 2, 32
SMALL = dict(embed_dim=C, depth=DEPTH, num_heads=HEADS)
SRC = 64  # source checkpoints are trained at 64x64: a 4x4 patch grid


def _jitter(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # move every parameter (LayerNorms too) off its init
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


# ----------------------------------------------------------------------------- OpenAI CLIP layout

class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _ResBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(d, 4 * d)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(4 * d, d))]))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, d, layers, h):
        super().__init__()
        self.resblocks = nn.Sequential(*[_ResBlock(d, h) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class _OpenAIVisual(nn.Module):
    """openai/CLIP VisionTransformer, returning every token after ln_post @ proj."""

    def __init__(self, res, patch, width, layers, heads, out):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        return self.ln_post(x) @ self.proj


class _OpenAICLIP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.visual = _OpenAIVisual(SRC, 16, C, DEPTH, HEADS, PROJ)
        self.token_embedding = nn.Embedding(10, 16)  # text tower keys must be ignored
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, image):
        return self.visual(image)


@pytest.fixture(scope="module")
def openai_src():
    return _jitter(_OpenAICLIP())


def _clip_backbone(hw=(SRC, SRC), **kw):
    return build_backbone("clip_vit_b16", img_size=hw, proj_dim=PROJ, **dict(SMALL, **kw)).eval()


def _tokens(backbone, x):
    with torch.no_grad():
        cls, patches = backbone(x)
    return torch.cat([cls[:, None], patches], dim=1)


X = torch.randn(2, 3, SRC, SRC, generator=torch.Generator().manual_seed(3))


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
    ref = resample_abs_pos_embed(src, new_size=list(grid), old_size=[4, 4], num_prefix_tokens=1)
    assert torch.allclose(m.vit.pos_embed, ref, atol=1e-6)
    assert torch.equal(m.vit.pos_embed[0, 0], src[0, 0])  # class position kept as is
    cls, patches = m(torch.randn(1, 3, *hw))
    assert patches.shape == (1, grid[0] * grid[1], PROJ)


# ----------------------------------------------------------------------------- timm layouts

@pytest.fixture(scope="module")
def timm_src():
    torch.manual_seed(2)
    return _jitter(timm.create_model("vit_base_patch16_224", img_size=SRC, num_classes=10, **SMALL), seed=2)


def _timm_tokens(model, x):
    with torch.no_grad():
        return model.forward_features(x)


def _vit_backbone(variant="vit_b16", hw=(SRC, SRC), **kw):
    return build_backbone(variant, img_size=hw, **dict(SMALL, **kw)).eval()


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


# ----------------------------------------------------------------------------- download / cache

@pytest.fixture
def hub(tmp_path, monkeypatch):
    d = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(d))
    return d


def test_download_to_cache_then_reuse(openai_src, tmp_path, hub, monkeypatch):
    local = tmp_path / "ViT-B-16.pt"
    torch.jit.trace(openai_src, X).save(str(local))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        assert os.path.dirname(dst) == str(hub / "checkpoints")
        shutil.copyfile(local, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    expected = hub / "checkpoints" / "ViT-B-16.pt"
    assert W.cached_path("clip_vit_b16") == str(expected)
    m = _clip_backbone(pretrained=True)
    assert calls and calls[0][0] == W.PRETRAINED_FILES["clip_vit_b16"].url
    assert calls[0][2] == "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    assert sorted(os.listdir(hub / "checkpoints")) == ["ViT-B-16.pt"]
    with torch.no_grad():
        assert torch.allclose(_tokens(m, X), openai_src(X), atol=1e-6)
    _clip_backbone(pretrained=True)  # cached: no second download
    assert len(calls) == 1


def test_failed_download_says_where_to_place_file(hub, monkeypatch):
    def broken(url, dst, hash_prefix=None, progress=True):
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken)
    url = W.PRETRAINED_FILES["vit_b16"].url
    target = str(hub / "checkpoints" / url.rsplit("/", 1)[-1])
    with pytest.raises(W.PretrainedDownloadError) as err:
        build_backbone("vit_b16", img_size=(SRC, SRC), pretrained=True, **SMALL)
    assert url in str(err.value) and f"place the file at {target}" in str(err.value)
    assert os.listdir(hub / "checkpoints") == []  # no partial file left behind


def test_published_urls():
    f = W.PRETRAINED_FILES
    assert f["clip_vit_b16"].url == ("https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eab"
                                     "d078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt")
    assert f["vit_b16"].url == timm.models.get_pretrained_cfg("vit_base_patch16_224.augreg_in21k_ft_in1k").url
    assert f["vit_tiny"].url == timm.models.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k_ft_in1k").url


# ----------------------------------------------------------------------------- bad input

def test_bad_files_are_named(tmp_path):
    m = _vit_backbone()
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(W.WeightsFormatError, match=r"notes\.pth.*Expected .*npz"):
        W.load_pretrained(m, str(text))
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(W.WeightsFormatError, match=r"list\.pth holds a list"):
        W.load_pretrained(m, str(lst))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, other)
    with pytest.raises(W.WeightsFormatError, match=r"resnet\.pth has no ViT weights"):
        W.load_pretrained(m, str(other))
    npz = str(tmp_path / "other.npz")
    np.savez(npz, a=np.zeros(2))
    with pytest.raises(W.WeightsFormatError, match=r"other\.npz"):
        W.load_pretrained(m, npz)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        W.load_pretrained(m, str(tmp_path / "nowhere.pth"))


def test_wrong_width_checkpoint_is_rejected(timm_src, tmp_path):
    path = tmp_path / "timm.pth"
    torch.save(timm_src.state_dict(), path)
    m = build_backbone("vit_b16", img_size=(SRC, SRC), embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(W.WeightsFormatError, match=r"timm\.pth does not fit .*vit\.cls_token"):
        W.load_pretrained(m, str(path))


def test_only_rank0_logs_and_bad_source(timm_src, tmp_path, caplog, monkeypatch):
    path = tmp_path / "timm.pth"
    torch.save(dict(timm_src.state_dict(), **{"foo.bar": torch.zeros(1)}), path)
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.DEBUG, logger="torchreid_sdtps"):
        m = _vit_backbone(pretrained=str(path))
    assert caplog.records == []
    assert torch.allclose(_tokens(m, X), _timm_tokens(timm_src, X), atol=1e-6)
    with pytest.raises(TypeError, match="True or a file path"):
        W.load_pretrained(m, 3)


# ----------------------------------------------------------------------------- unsafe pickles

def _checkpoint_with_args(timm_src, path):
    """A training checkpoint as timm's train.py writes it: weights plus the argparse ``args``."""
    import argparse
    torch.save({"state_dict": timm_src.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)


def test_unsafe_pickle_needs_explicit_opt_in(timm_src, tmp_path, monkeypatch):
    path = tmp_path / "train_ckpt.pth"
    _checkpoint_with_args(timm_src, path)
    monkeypatch.delenv(W.UNSAFE_PICKLE_ENV, raising=False)
    m = _vit_backbone()
    with pytest.raises(W.UnsafePickleError, match=r"train_ckpt\.pth.*argparse\.Namespace.*"
                       r"allow_unsafe_pickle=True.*" + W.UNSAFE_PICKLE_ENV + r"=1"):
        W.load_pretrained(m, str(path))
    with pytest.raises(W.UnsafePickleError):  # an explicit False wins over the environment
        monkeypatch.setenv(W.UNSAFE_PICKLE_ENV, "1")
        W.load_pretrained(m, str(path), allow_unsafe_pickle=False)
    monkeypatch.setenv(W.UNSAFE_PICKLE_ENV, "maybe")
    with pytest.raises(ValueError, match=W.UNSAFE_PICKLE_ENV + "='maybe'"):
        W.load_pretrained(m, str(path))


def test_unsafe_pickle_opt_in_by_argument_or_environment(timm_src, tmp_path, monkeypatch, caplog):
    path = tmp_path / "train_ckpt.pth"
    _checkpoint_with_args(timm_src, path)
    monkeypatch.delenv(W.UNSAFE_PICKLE_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="torchreid_sdtps"):
        m = _vit_backbone(pretrained=str(path), allow_unsafe_pickle=True)
    assert torch.allclose(_tokens(m, X), _timm_tokens(timm_src, X), atol=1e-6)
    assert "weights_only=False" in caplog.text
    monkeypatch.setenv(W.UNSAFE_PICKLE_ENV, "1")
    m2 = _vit_backbone(pretrained=str(path))
    assert torch.equal(_tokens(m2, X), _tokens(m, X))
    with pytest.raises(ValueError, match="allow_unsafe_pickle only applies"):
        _vit_backbone(allow_unsafe_pickle=True)  # no pretrained file: the flag would be ignored


def test_backbone_and_weights_do_not_import_each_other():
    import ast
    import inspect

    from torchreid_sdtps.models import backbone as B
    from torchreid_sdtps.models.weights import convert, fetch, read

    for mod, other in ((W, "backbone"), (convert, "backbone"), (fetch, "backbone"),
                       (read, "backbone"), (B, "weights")):
        tree = ast.parse(inspect.getsource(mod))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(other in name for name in imported), (mod.__name__, imported)
    src = inspect.getsource(convert)
    assert "import _" not in src and not any(  # timm's public API only
        a.name.startswith("_") for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)
        and (n.module or "").startswith("timm") for a in n.names)
