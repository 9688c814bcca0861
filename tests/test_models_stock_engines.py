"""torchreid's UNMODIFIED ImageSoftmaxEngine / ImageTripletEngine train and rank ``sdtps_vit_tiny``.

The model comes from torchreid's own ``build_model`` (registered by the plugin) and the data
from torchreid's ``ImageDataManager``, on a tiny synthetic_msreid and a tiny RGBNT201 tree.
"""
from __future__ import annotations

import glob
import os.path as osp
import re

import pytest
import torch
from _trees import make_rgbnt201_tree

import torchreid_sdtps  # noqa: F401  (registers datasets and models with torchreid)
from torchreid_sdtps import compat
from torchreid_sdtps.data.synthetic import using_spec
from torchreid_sdtps.models.net import SDTPSNet

TINY_SYNTHETIC = dict(num_train_ids=4, num_test_ids=3, num_cameras=2, images_per_camera=1,
                      height=64, width=32)
RANKS = [1, 5]  # torchreid prints CMC at these ranks; the tiny gallery has 6 entries


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("reid-data")
    make_rgbnt201_tree(r, num_ids=4, cams=2, per_cam=1, size=(64, 32), test_ids=3)
    return str(r)


def _manager(root: str, source: str):
    with using_spec(**TINY_SYNTHETIC):  # only read by synthetic_msreid
        return compat.data().ImageDataManager(
            root=root, sources=source, height=128, width=64, use_gpu=False, workers=0,
            batch_size_train=8, batch_size_test=16, train_sampler="RandomIdentitySampler",
            num_instances=2, transforms=["random_flip"])


def _ranks(text: str) -> tuple[float, float]:
    """(mAP, Rank-1) as fractions from torchreid's printed results."""
    m_ap = re.findall(r"mAP: ([\d.]+)%", text)
    rank1 = re.findall(r"Rank-1\s*: ([\d.]+)%", text)
    assert m_ap and rank1, text[-2000:]
    return float(m_ap[-1]) / 100, float(rank1[-1]) / 100


@pytest.mark.parametrize("source", ["synthetic_msreid", "rgbnt201"])
@pytest.mark.parametrize("loss, engine_name", [("softmax", "ImageSoftmaxEngine"),
                                               ("triplet", "ImageTripletEngine")])
def test_stock_engine_trains_and_ranks(root, tmp_path, capsys, source, loss, engine_name):
    torch.manual_seed(0)
    dm = _manager(root, source)
    model = compat.models().build_model("sdtps_vit_tiny", dm.num_train_pids, loss=loss,
                                        pretrained=False, use_gpu=False)
    assert isinstance(model, SDTPSNet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = compat.optim().build_optimizer(model, optim="adam", lr=3e-4)
    scheduler = compat.optim().build_lr_scheduler(optimizer, lr_scheduler="single_step", stepsize=20)
    engine = getattr(compat.engine(), engine_name)(dm, model, optimizer=optimizer,
                                                   scheduler=scheduler, use_gpu=False)
    capsys.readouterr()

    save_dir = str(tmp_path / "log")
    engine.run(save_dir=save_dir, max_epoch=1, print_freq=100, ranks=RANKS)
    m_ap, rank1 = _ranks(capsys.readouterr().out)
    assert 0.0 <= m_ap <= 1.0 and 0.0 <= rank1 <= 1.0
    ckpts = glob.glob(osp.join(save_dir, "model", "model.pth.tar-*"))
    assert len(ckpts) == 1
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert 0.0 <= float(saved["rank1"]) <= 1.0
    assert abs(float(saved["rank1"]) - rank1) < 1e-3

    changed = [k for k, v in model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    for prefix in ("backbone.", "guide.", "sdtps.score_mlp.", "sdtps.aggregate.", "neck_sdtps.",
                   "neck_ori."):
        assert any(k.startswith(prefix) for k in changed), prefix

    engine.run(test_only=True, ranks=RANKS)
    m_ap2, rank1_2 = _ranks(capsys.readouterr().out)
    assert 0.0 <= m_ap2 <= 1.0 and 0.0 <= rank1_2 <= 1.0
    assert (m_ap2, rank1_2) == (m_ap, rank1)  # eval is deterministic, weights unchanged since
