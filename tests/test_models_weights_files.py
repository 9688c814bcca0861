"""Pretrained weights as files: download and cache, bad files named, unsafe pickles only on
opt-in, and the module structure (backbone and weights never import each other)."""
import logging
import os
import shutil

import numpy as np
import pytest
import timm
import torch
from _weights import (
    SMALL,
    SRC,
    X,
    _clip_backbone,
    _timm_tokens,
    _tokens,
    _vit_backbone,
)

from torchreid_sdtps.models import weights as W
from torchreid_sdtps.models.factory import build_backbone

torch.set_num_threads(1)
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]



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
