"""RGBNT201 / RGBNT100 / MSVR310 through torchreid's ImageDataManager, protocols and errors."""
from __future__ import annotations

import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from _trees import make_msvr310_tree, make_rgbnt100_tree, make_rgbnt201_tree
from PIL import Image
from torchvision.transforms.functional import to_tensor

import torchreid_sdtps  # noqa: F401  (registers rgbnt201 / rgbnt100 / msvr310)
from torchreid_sdtps import compat
from torchreid_sdtps.data import (
    MSVR310,
    RGBNT100,
    RGBNT201,
    DatasetFormatError,
    DatasetNotFoundError,
    EmptySplitError,
    MissingModalityError,
    MultiModalImageDataset,
)

H, W = 32, 16
IDS, CAMS, PER_CAM = 4, 2, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One root holding a tiny tree of each real layout."""
    r = tmp_path_factory.mktemp("reid-data")
    make_rgbnt201_tree(r, num_ids=IDS, cams=CAMS, per_cam=PER_CAM, size=(H, W))
    make_rgbnt100_tree(r, num_ids=IDS, cams=CAMS, per_cam=PER_CAM, size=(16, 32), junk=True)
    make_msvr310_tree(r, num_ids=IDS, cams=CAMS, per_cam=PER_CAM, size=(16, 32), scenes=2)
    return str(r)


def _manager(root, sources, **kw):
    args = dict(root=root, sources=sources, height=H, width=W, use_gpu=False, workers=0,
                batch_size_train=8, batch_size_test=8, transforms=["random_flip"])
    args.update(kw)
    return compat.data().ImageDataManager(**args)


# expected split sizes of the tiny trees
COUNTS = {
    "rgbnt201": (IDS * CAMS * PER_CAM, IDS * CAMS * PER_CAM, IDS * CAMS * PER_CAM),
    "rgbnt100": (IDS * CAMS * PER_CAM, IDS * CAMS, IDS * CAMS * PER_CAM),
    "msvr310": (IDS * 2 * CAMS * PER_CAM, IDS * 2 * CAMS, IDS * 2 * CAMS * PER_CAM),
}


@pytest.mark.parametrize("name", ["rgbnt201", "rgbnt100", "msvr310"])
def test_datamanager_loads_each_layout(root, name):
    dm = _manager(root, name)
    train = dm.train_loader.dataset
    query = dm.test_loader[name]["query"].dataset
    gallery = dm.test_loader[name]["gallery"].dataset
    assert isinstance(train, MultiModalImageDataset)
    assert dm.num_train_pids == IDS
    assert (len(train.train), len(query.query), len(gallery.gallery)) == COUNTS[name]
    assert sorted({s[1] for s in train.train}) == list(range(IDS))  # relabelled
    # 0-based cameras; MSVR310 keeps the raw camera digit of its file names (v1, v2)
    expected_cams = set(range(1, CAMS + 1)) if name == "msvr310" else set(range(CAMS))
    assert {s[2] for s in train.train} == expected_cams
    # test pids keep their original ids (after the train ids in the trees)
    assert {s[1] for s in query.query} == set(range(IDS + 1, 2 * IDS + 1))
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (8, 3, 3, H, W)
    assert batch["cam_label"].shape == (8,)
    qbatch = next(iter(dm.test_loader[name]["query"]))
    assert qbatch["img"].shape[1:] == (3, 3, H, W)


def test_rgbnt201_camids_and_query_equals_gallery(root):
    ds = RGBNT201(root=root, verbose=False)
    assert {s[2] for s in ds.train} == {0, 1}
    assert ds.query == ds.gallery
    for paths, _pid, camid, _ in ds.train + ds.query:
        name = osp.basename(paths[0])
        assert [osp.basename(p) for p in paths] == [name] * 3
        assert camid == int(name.split("_cam")[1][0]) - 1


def test_random_identity_sampler_gives_p_ids_by_k(root):
    dm = _manager(root, "rgbnt201", train_sampler="RandomIdentitySampler", num_instances=2)
    for batch in dm.train_loader:
        pids = batch["pid"].view(4, 2)
        assert (pids[:, 0] == pids[:, 1]).all()
        assert len(set(pids[:, 0].tolist())) == 4


def test_combineall_keeps_multimodal(root):
    dm = _manager(root, "rgbnt201", combineall=True)
    train = dm.train_loader.dataset
    assert isinstance(train, MultiModalImageDataset)
    assert dm.num_train_pids == 2 * IDS
    assert len(train.train) == COUNTS["rgbnt201"][0] + 2 * COUNTS["rgbnt201"][1]
    assert train[len(train) - 1]["img"].shape == (3, 3, H, W)


def test_two_sources_keep_multimodal(root):
    dm = _manager(root, ["rgbnt201", "msvr310"])
    train = dm.train_loader.dataset
    assert type(train) is MultiModalImageDataset
    n201 = COUNTS["rgbnt201"][0]
    assert len(train) == n201 + COUNTS["msvr310"][0]
    assert dm.num_train_pids == 2 * IDS
    item = train[n201]  # first MSVR310 sample
    assert item["img"].shape == (3, 3, H, W)
    assert item["pid"] >= IDS and item["dsetid"] == 1
    msvr = MSVR310(root=root, verbose=False)
    assert item["cam_label"] == msvr.camera_label(msvr.train[0]) + 2  # offset by RGBNT201's cams
    assert torch.cat([b["img"] for b in dm.train_loader]).shape[1:] == (3, 3, H, W)


def test_combineall_msvr310_uses_cameras_for_added_samples(root):
    ds = MSVR310(root=root, combineall=True, verbose=False)
    added = ds.train[COUNTS["msvr310"][0]:]
    assert added and all(s[2] == ds.camera_label(s) for s in added)
    assert {s[2] for s in added} == set(range(1, CAMS + 1))
    assert all(s[2] == int(osp.basename(s[0][0])[6:9]) for s in ds.query)  # scene kept


# ---------------------------------------------------------------- MSVR310 protocol
def test_msvr310_camid_is_scene_in_query_gallery_and_camera_in_train(root):
    ds = MSVR310(root=root, verbose=False)
    for paths, _, camid, _ in ds.query + ds.gallery:
        name = osp.basename(paths[0])
        assert camid == int(name[6:9])
        assert ds.camera_label((paths, 0, camid, 0)) == int(name[11])
    for paths, _, camid, _ in ds.train:
        assert camid == int(osp.basename(paths[0])[11])
    assert [p.split(os.sep)[-2] for p in ds.query[0][0]] == ["vis", "ni", "th"]
    assert ds.num_cam_labels == CAMS + 1  # cameras v1..v2 -> labels 1, 2


def _rank(ds, dist_fn):
    q, g = ds.query, ds.gallery
    distmat = np.array([[dist_fn(a, b) for b in g] for a in q], dtype=np.float32)
    cmc, mAP = compat.metrics().evaluate_rank(
        distmat, np.array([s[1] for s in q]), np.array([s[1] for s in g]),
        np.array([s[2] for s in q]), np.array([s[2] for s in g]), max_rank=5, use_cython=False)
    return cmc, mAP


def test_msvr310_protocol_drops_same_vehicle_same_scene(root):
    ds = MSVR310(root=root, verbose=False)
    cam = ds.camera_label
    # every query has a same-vehicle same-scene gallery entry from another camera
    for qs in ds.query:
        assert any(g[1] == qs[1] and g[2] == qs[2] and cam(g) != cam(qs) for g in ds.gallery)

    def same_scene_nearest(a, b):
        if a[1] == b[1] and a[2] == b[2]:
            return 0.0  # same vehicle, same scene (any camera): must be ignored
        return 1.0 if a[1] != b[1] else 2.0  # other vehicles before other-scene matches

    cmc, mAP = _rank(ds, same_scene_nearest)
    assert cmc[0] == 0.0  # the ignored entries would have been rank-1 hits

    def other_scene_nearest(a, b):
        return 0.0 if a[1] == b[1] and a[2] != b[2] else 1.0

    cmc, mAP = _rank(ds, other_scene_nearest)
    assert cmc[0] == 1.0 and mAP == pytest.approx(1.0)  # same vehicle, other scene counts


# ---------------------------------------------------------------- RGBNT100
def test_rgbnt100_split_matches_source_thirds(root):
    ds = RGBNT100(root=root, transform=None, verbose=False)
    item = ds[0]
    (path,) = item["impath"]
    src = Image.open(path).convert("RGB")
    w3 = src.size[0] // 3
    parts = [to_tensor(src.crop((m * w3, 0, (m + 1) * w3, src.size[1]))) for m in range(3)]
    assert item["img"].shape == (3, 3, 16, 32)
    for m in range(3):
        assert torch.equal(item["img"][m], parts[m])
    means = [float(p.mean()) for p in parts]
    assert means[0] < means[1] < means[2]  # three different parts, in RGB|NI|TI order


def test_rgbnt100_skips_junk_and_parses_names(root):
    ds = RGBNT100(root=root, verbose=False)
    assert -1 not in {s[1] for s in ds.gallery}
    assert os.path.exists(osp.join(root, "RGBNT100", "rgbir", "bounding_box_test",
                                   "-1_c001_0000.jpg"))
    for (path,), pid, camid, _ in ds.query:
        name = osp.basename(path)
        assert pid == int(name[:4]) and camid == int(name[6:9]) - 1


# ---------------------------------------------------------------- errors
def test_wrong_root_prints_layout_and_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        RGBNT201(root=str(tmp_path / "nowhere"), verbose=False)
    msg = str(err.value)
    for part in ("RGBNT201", "train_171", "{RGB,NI,TI}", "Expected layout", "download=True",
                 "drive.google.com", str(tmp_path / "nowhere")):
        assert part in msg, part


def test_wrong_root_rgbnt100_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        RGBNT100(root=str(tmp_path), verbose=False)
    assert "rgbir" in str(err.value) and "pan.baidu.com" in str(err.value)
    with pytest.raises(RuntimeError, match="cannot be downloaded automatically.*baidu"):
        RGBNT100(root=str(tmp_path), download=True, verbose=False)


def test_wrong_root_msvr310(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)query3.*\{vis,ni,th\}.*download=True"):
        MSVR310(root=str(tmp_path), verbose=False)


def test_unknown_dataset_name(root):
    with pytest.raises(ValueError, match="rgbnt201"):
        _manager(root, "rgbnt202")


def test_missing_modality_file_at_construction(tmp_path):
    r = make_rgbnt201_tree(tmp_path, num_ids=2, cams=1, per_cam=1, size=(H, W))
    victim = osp.join(r, "RGBNT201", "test", "TI", "000003_cam1_0000.jpg")
    os.remove(victim)
    with pytest.raises(MissingModalityError) as err:
        RGBNT201(root=r, verbose=False)
    assert "TI image missing" in str(err.value) and victim in str(err.value)


def test_missing_modality_folder_msvr310(tmp_path):
    r = make_msvr310_tree(tmp_path, num_ids=2, cams=1, per_cam=1, scenes=1)
    shutil.rmtree(osp.join(r, "MSVR310", "query3", "0003", "ni"))
    with pytest.raises(MissingModalityError, match=r"NI folder not found: .*query3.0003.ni"):
        MSVR310(root=r, verbose=False)


def test_empty_split(tmp_path):
    r = make_rgbnt201_tree(tmp_path, num_ids=2, cams=1, per_cam=1, size=(H, W))
    for mod in ("RGB", "NI", "TI"):
        folder = osp.join(r, "RGBNT201", "test", mod)
        shutil.rmtree(folder)
        os.makedirs(folder)
    with pytest.raises(EmptySplitError) as err:
        RGBNT201(root=r, verbose=False)
    assert "no query image" in str(err.value) and osp.join("RGBNT201", "test") in str(err.value)


def test_bad_file_names(tmp_path):
    r = make_rgbnt201_tree(tmp_path, num_ids=2, cams=1, per_cam=1, size=(H, W))
    for mod in ("RGB", "NI", "TI"):
        shutil.copy(osp.join(r, "RGBNT201", "train_171", mod, "000001_cam1_0000.jpg"),
                    osp.join(r, "RGBNT201", "train_171", mod, "person.jpg"))
    with pytest.raises(DatasetFormatError, match="person.jpg"):
        RGBNT201(root=r, verbose=False)
    r2 = make_msvr310_tree(tmp_path / "m", num_ids=2, cams=1, per_cam=1, scenes=1)
    for mod in ("vis", "ni", "th"):
        d = osp.join(r2, "MSVR310", "bounding_box_train", "0001", mod)
        shutil.copy(osp.join(d, os.listdir(d)[0]), osp.join(d, "car.jpg"))
    with pytest.raises(DatasetFormatError, match=r"car.jpg.*name\[6:9\]"):
        MSVR310(root=r2, verbose=False)


def test_extra_datamanager_kwargs_accepted(root):
    ds = RGBNT201(root=root, verbose=False, split_id=0, cuhk03_labeled=False,
                  cuhk03_classic_split=False, market1501_500k=False, k_tfm=1, mode="gallery")
    assert ds.data is ds.gallery
