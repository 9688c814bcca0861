"""FeatureExtractor: built from a checkpoint alone; paths, PIL images, arrays, lists and tensors
give the evaluation's features; ``None`` modalities equal the zeroed evaluation; clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _deploy import tiny_checkpoint
from conftest import TINY_OPTS
from PIL import Image

from torchreid_sdtps.data.multimodal import ImageReadError, MissingModalityError
from torchreid_sdtps.deploy import FeatureExtractor
from torchreid_sdtps.engine.evaluation import extract_split
from torchreid_sdtps.utils import zero_modalities

torch.set_num_threads(1)
TARGET = "synthetic_msreid"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fx_data")
    cfg, dm, engine, ckpt = tiny_checkpoint(root, root / "log")
    fx = FeatureExtractor(ckpt, device="cpu", batch_size=64)
    query = dm.test_loader[TARGET]["query"]
    samples = list(query.dataset.query)
    cams = [query.dataset.camera_label(s) for s in samples]
    return {"cfg": cfg, "dm": dm, "engine": engine, "ckpt": ckpt, "fx": fx, "loader": query,
            "paths": [s[0] for s in samples], "cams": cams}


def _engine_features(tiny, zeroed=()):
    engine = tiny["engine"]
    engine.set_model_mode("eval")
    engine._zeroed = tuple(zeroed)
    try:
        return extract_split(engine, tiny["loader"])[0]
    finally:
        engine._zeroed = ()


def test_rebuilds_the_model_from_the_checkpoint_meta(tiny):
    fx = tiny["fx"]
    assert fx.meta["model_name"] == "sdtps_vit_tiny"
    assert (fx.meta["height"], fx.meta["width"]) == (64, 32)
    assert fx.meta["norm_mean"] == [0.5, 0.5, 0.5] and fx.num_cameras == 2
    trained = tiny["engine"].model.state_dict()
    for key, value in fx.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert not fx.model.training


def test_paths_equal_the_evaluation_features(tiny):
    fx = tiny["fx"]
    ref = _engine_features(tiny)
    got = fx(tiny["paths"], cam_ids=tiny["cams"])
    assert got.shape == ref.shape == (len(tiny["paths"]), fx.model.feature_dim)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_every_input_type_gives_the_same_features(tiny):
    fx = tiny["fx"]
    sample, cam = tiny["paths"][3], tiny["cams"][3]
    pil = [Image.open(p).convert("RGB") for p in sample]
    arrays = [np.asarray(im) for im in pil]
    tensor = torch.stack([fx.preprocess(sample)[0]])
    ref = fx(sample, cam_ids=[cam])
    assert ref.shape == (1, fx.model.feature_dim)
    for other in (fx(tuple(pil), cam_ids=cam), fx(arrays, cam_ids=[cam]),
                  fx(tensor, cam_ids=[cam]), fx(tensor[0], cam_ids=[cam]),
                  fx([sample, sample], cam_ids=[cam, cam])[1:]):
        # float32: a batch of 2 may take another kernel path than a batch of 1 (~1e-6 apart)
        torch.testing.assert_close(other, ref, atol=1e-5, rtol=0)


def test_batch_size_and_normalize(tiny):
    fx, paths, cams = tiny["fx"], tiny["paths"][:7], tiny["cams"][:7]
    small = FeatureExtractor(tiny["ckpt"], device="cpu", batch_size=3, normalize=True)
    torch.testing.assert_close(small(paths, cam_ids=cams), F.normalize(fx(paths, cam_ids=cams)),
                               atol=1e-5, rtol=0)
    assert torch.allclose(small(paths, cam_ids=cams).norm(dim=1), torch.ones(7), atol=1e-5)


@pytest.mark.parametrize("missing", [(1,), (0, 2)])
def test_none_modalities_equal_the_zeroed_evaluation(tiny, missing):
    fx = tiny["fx"]
    ref = _engine_features(tiny, zeroed=missing)
    samples = [tuple(None if i in missing else p for i, p in enumerate(s)) for s in tiny["paths"]]
    got = fx(samples, cam_ids=tiny["cams"])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    full = fx(tiny["paths"], cam_ids=tiny["cams"])
    assert (got - full).abs().max() > 1e-3  # the zeroing changes the features


def test_zero_modalities_leaves_the_input_alone():
    x = torch.ones(2, 3, 3, 4, 4)
    out = zero_modalities(x, (1,))
    assert out[:, 1].abs().sum() == 0 and out[:, [0, 2]].eq(1).all() and x.eq(1).all()
    with pytest.raises(ValueError, match=r"\(B, M, 3, H, W\)"):
        zero_modalities(x[0], (1,))


def test_wrong_inputs_raise_naming_them(tiny, tmp_path):
    fx = tiny["fx"]
    rgb, ni, ti = tiny["paths"][0]
    with pytest.raises(ValueError, match=r"sample 0 has 2 image\(s\); expected 3.*RGB"):
        fx((rgb, ni))
    with pytest.raises(ValueError, match=r"sample 1 has 2 image\(s\)"):
        fx([(rgb, ni, ti), (rgb, ni)])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3, 32, 32\); expected \(B, 3, 3, 64, 32\)"):
        fx(torch.zeros(2, 3, 3, 32, 32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match=f"NI image '{broken}'"):
        fx((rgb, str(broken), ti))
    with pytest.raises(MissingModalityError, match="TI image not found: '/no/such.jpg'"):
        fx((rgb, ni, "/no/such.jpg"))
    with pytest.raises(ValueError, match=r"array of shape \(4, 4, 5\)"):
        fx((np.zeros((4, 4, 5), np.uint8), ni, ti))
    with pytest.raises(ValueError, match="every modality is None"):
        fx((None, None, None))
    with pytest.raises(ValueError, match=r"cam_ids must be in \[0, 1\]"):
        fx((rgb, ni, ti), cam_ids=[5])
    with pytest.raises(ValueError, match="cam_ids has 2 entries for 1 sample"):
        fx((rgb, ni, ti), cam_ids=[0, 1])


def test_checkpoint_without_meta_needs_the_config(tiny, tmp_path):
    ckpt = torch.load(tiny["ckpt"], map_location="cpu", weights_only=True)
    ckpt.pop("meta")
    stock = tmp_path / "stock.pth.tar"
    torch.save(ckpt, stock)
    with pytest.raises(ValueError, match="carries no 'meta'.*pass the training config"):
        FeatureExtractor(str(stock), device="cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: '/no/ckpt'"):
        FeatureExtractor("/no/ckpt", device="cpu")
    demo = ["model.name", "sdtps_vit_tiny", "data.norm_mean", "[0.5, 0.5, 0.5]",
            "data.norm_std", "[0.5, 0.5, 0.5]"]
    fx = FeatureExtractor(str(stock), opts=[*TINY_OPTS, *demo], device="cpu")
    assert fx.meta["num_classes"] == tiny["fx"].meta["num_classes"] and fx.num_cameras == 2
    sample, cam = tiny["paths"][0], tiny["cams"][:1]
    torch.testing.assert_close(fx(sample, cam_ids=cam), tiny["fx"](sample, cam_ids=cam))


def test_camera_ids_on_a_model_without_sie_are_refused(tiny):
    demo = ["model.name", "sdtps_vit_tiny", "model.pretrained", "False", "sdtps.sie_camera",
            "False"]
    fx = FeatureExtractor(opts=[*TINY_OPTS, *demo], device="cpu")  # random weights, no checkpoint
    assert fx.num_cameras == 0 and fx.meta["num_classes"] == 1
    sample = tiny["paths"][0]
    assert fx(sample).shape == (1, fx.model.feature_dim)
    with pytest.raises(ValueError, match="no SIE camera embedding"):
        fx(sample, cam_ids=[0])


def test_weights_load_strictly_and_overrides_change_the_stored_config(tiny, tmp_path):
    from torchreid_sdtps.checkpoint import CheckpointMismatchError

    ckpt = torch.load(tiny["ckpt"], map_location="cpu", weights_only=True)
    dropped = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"].pop(dropped)  # one parameter short: refused, not left at its init
    short = tmp_path / "short.pth.tar"
    torch.save(ckpt, short)
    with pytest.raises(CheckpointMismatchError,
                       match=rf"'{short}' does not fit model sdtps_vit_tiny: 1 missing.*{dropped}"):
        FeatureExtractor(str(short), device="cpu")
    # overrides go on top of the checkpoint's own training config (not the demo defaults)
    fx = FeatureExtractor(tiny["ckpt"], opts=["test.batch_size", "7"], device="cpu")
    assert fx.meta["model_kwargs"] == tiny["fx"].meta["model_kwargs"]
    assert (fx.meta["height"], fx.meta["width"]) == (64, 32)
