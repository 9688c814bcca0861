"""MultiModalImageDataset: image reading, synchronised transforms, k_tfm, __add__, errors."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch
from _trees import make_rgbnt201_tree, write_jpeg
from PIL import Image
from torchvision.transforms.functional import to_tensor

import torchreid_sdtps  # noqa: F401  (registers the datasets)
from torchreid_sdtps import compat
from torchreid_sdtps.data import (
    RGBNT201,
    EmptySplitError,
    ImageReadError,
    MissingModalityError,
    MultiModalImageDataset,
    read_image,
)
from torchreid_sdtps.data.multimodal import apply_synchronized, load_modalities

H, W = 32, 16
SEEDS = range(24)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _transforms(names):
    return compat.build_transforms(H, W, transforms=names)


@pytest.fixture(scope="module")
def same_root(tmp_path_factory):
    """RGBNT201 tree whose three modality images of a sample are identical files."""
    return make_rgbnt201_tree(tmp_path_factory.mktemp("same"), num_ids=2, cams=2, per_cam=1,
                              size=(H, W), same_modalities=True)


@pytest.fixture(scope="module")
def diff_root(tmp_path_factory):
    """RGBNT201 tree with different images per modality."""
    return make_rgbnt201_tree(tmp_path_factory.mktemp("diff"), num_ids=2, cams=2, per_cam=1,
                              size=(H, W), seed=1)


def _dataset(root, names, **kw):
    tr, te = _transforms(names)
    return RGBNT201(root=root, transform=tr, verbose=False, **kw), te


# ---------------------------------------------------------------- item format
def test_item_format_and_dtype(diff_root):
    ds, _ = _dataset(diff_root, ["random_flip"])
    item = ds[0]
    assert set(item) == {"img", "pid", "camid", "cam_label", "impath", "dsetid"}
    assert item["img"].shape == (3, 3, H, W) and item["img"].dtype == torch.float32
    assert isinstance(item["impath"], tuple) and len(item["impath"]) == 3
    assert [p.split(os.sep)[-2] for p in item["impath"]] == ["RGB", "NI", "TI"]
    assert item["cam_label"] == item["camid"] == ds.data[0][2]
    assert item["pid"] == ds.data[0][1] and item["dsetid"] == 0


def test_no_transform_gives_unit_range_tensor(diff_root):
    ds = RGBNT201(root=diff_root, transform=None, verbose=False)
    img = ds[0]["img"]
    ref = torch.stack([to_tensor(Image.open(p).convert("RGB")) for p in ds.data[0][0]])
    assert torch.equal(img, ref)


# ---------------------------------------------------------------- synchronised transforms
def test_identical_modalities_stay_identical_under_all_random_transforms(same_root):
    ds, te = _dataset(same_root, ["random_flip", "random_crop", "random_erase"])
    ref = te(Image.open(ds.data[0][0][0]).convert("RGB"))
    outs = []
    for seed in SEEDS:
        _seed(seed)
        img = ds[0]["img"]
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2]), f"seed {seed}"
        outs.append(img[0])
    # augmentations really happen and differ between seeds
    assert any(not torch.equal(o, ref) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > len(outs) // 2


def test_flip_is_the_same_decision_for_every_modality(diff_root):
    ds, te = _dataset(diff_root, ["random_flip"])
    refs = [te(Image.open(p).convert("RGB")) for p in ds.data[0][0]]
    flips = set()
    for seed in SEEDS:
        _seed(seed)
        img = ds[0]["img"]
        flipped = [torch.equal(img[m], refs[m].flip(-1)) for m in range(3)]
        kept = [torch.equal(img[m], refs[m]) for m in range(3)]
        assert all(flipped) or all(kept), f"seed {seed}: flipped={flipped} kept={kept}"
        flips.add(all(flipped))
    assert flips == {True, False}  # both outcomes seen


def test_erase_box_is_the_same_for_every_modality(diff_root):
    ds, te = _dataset(diff_root, ["random_erase"])
    refs = [te(Image.open(p).convert("RGB")) for p in ds.data[0][0]]
    erased_any = False
    for seed in SEEDS:
        _seed(seed)
        img = ds[0]["img"]
        masks = [(img[m] != refs[m]).any(0) for m in range(3)]
        assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
        erased_any |= bool(masks[0].any())
    assert erased_any


def test_crop_is_the_same_for_every_modality(tmp_path):
    """Modalities with the same content at different brightness keep the same crop offset."""
    rng = np.random.RandomState(0)
    base = rng.randint(0, 200, size=(H, W, 3))
    paths = [write_jpeg(str(tmp_path / f"{m}.png"), base + 20 * m) for m in range(3)]
    tr, _ = _transforms(["random_crop"])
    imgs = load_modalities(paths, ("RGB", "NI", "TI"))
    for seed in SEEDS:
        _seed(seed)
        out = apply_synchronized(tr, imgs)
        # same geometry: per-pixel differences between modalities are nearly constant
        diff = out[1] - out[0]
        assert float(diff.std()) < 0.05, f"seed {seed}"


def test_rng_state_moves_on_between_samples(same_root):
    ds, _ = _dataset(same_root, ["random_flip", "random_crop", "random_erase"])
    _seed(0)
    outs = [ds[0]["img"] for _ in range(8)]
    assert len({o.numpy().tobytes() for o in outs}) > 1


def test_k_tfm_gives_k_synchronised_views(same_root):
    ds, _ = _dataset(same_root, ["random_flip", "random_crop", "random_erase"], k_tfm=3)
    _seed(3)
    views = ds[0]["img"]
    assert isinstance(views, list) and len(views) == 3
    for v in views:
        assert v.shape == (3, 3, H, W)
        assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2])
    assert not (torch.equal(views[0], views[1]) and torch.equal(views[1], views[2]))


# ---------------------------------------------------------------- reading errors
def test_missing_modality_file_at_load_time(tmp_path):
    root = make_rgbnt201_tree(tmp_path, num_ids=2, cams=1, per_cam=1, size=(H, W))
    ds = RGBNT201(root=root, verbose=False)
    ni = ds.data[0][0][1]
    os.remove(ni)
    with pytest.raises(MissingModalityError) as err:
        ds[0]
    assert "NI" in str(err.value) and ni in str(err.value)


def test_truncated_image_is_named(tmp_path):
    root = make_rgbnt201_tree(tmp_path, num_ids=2, cams=1, per_cam=1, size=(64, 32))
    ds = RGBNT201(root=root, verbose=False)
    ti = ds.data[0][0][2]
    data = open(ti, "rb").read()
    with open(ti, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        ds[0]
    assert ti in str(err.value) and "TI" in str(err.value)
    assert isinstance(err.value, OSError)


def test_not_an_image_is_named(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(str(path), "RGB")


def test_missing_file_read_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="NI image not found"):
        read_image(str(tmp_path / "nope.jpg"), "NI")


def test_different_sizes_are_resized_to_first_modality(tmp_path):
    rng = np.random.RandomState(0)
    sizes = [(H, W), (2 * H, 3 * W), (H // 2, W)]
    paths = [write_jpeg(str(tmp_path / f"m{i}.jpg"), rng.randint(0, 256, size=(*s, 3)))
             for i, s in enumerate(sizes)]
    imgs = load_modalities(paths, ("RGB", "NI", "TI"))
    assert [im.size for im in imgs] == [(W, H)] * 3
    expected = Image.open(paths[1]).convert("RGB").resize((W, H), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(imgs[1]), np.asarray(expected))
    assert apply_synchronized(None, imgs).shape == (3, 3, H, W)


def test_side_by_side_split_into_equal_parts(tmp_path):
    rng = np.random.RandomState(0)
    arr = rng.randint(0, 256, size=(H, 3 * W, 3))
    path = write_jpeg(str(tmp_path / "sbs.png"), arr)
    imgs = load_modalities((path,), ("RGB", "NI", "TI"))
    for m, im in enumerate(imgs):
        assert np.array_equal(np.asarray(im), arr[:, m * W:(m + 1) * W].astype(np.uint8))


def test_wrong_number_of_paths(tmp_path):
    with pytest.raises(ValueError, match="expected 3"):
        load_modalities(("a", "b"), ("RGB", "NI", "TI"))


# ---------------------------------------------------------------- construction and adding
def test_empty_split_in_base_class():
    sample = (("a.jpg", "b.jpg", "c.jpg"), 0, 0)
    with pytest.raises(EmptySplitError, match="query split is empty"):
        MultiModalImageDataset([sample], [], [sample], verbose=False)


def test_add_keeps_multimodal_image_dataset(diff_root, same_root):
    a = RGBNT201(root=diff_root, verbose=False)
    b = RGBNT201(root=same_root, verbose=False)
    total = sum([a, b])
    assert type(total) is MultiModalImageDataset
    assert isinstance(total, compat.image_dataset_base())
    assert len(total.train) == len(a.train) + len(b.train)
    assert total.num_train_pids == a.num_train_pids + b.num_train_pids
    assert {s[3] for s in total.train} == {0, 1}
    item = total[len(a.train)]
    assert item["img"].shape == (3, 3, H, W)
    assert item["pid"] == b.train[0][1] + a.num_train_pids
    assert item["cam_label"] == b.camera_label(b.train[0]) + a.num_cam_labels


def test_add_rejects_single_modal_dataset(diff_root):
    a = RGBNT201(root=diff_root, verbose=False)
    single = compat.image_dataset_base()([("x.jpg", 0, 0)], [("x.jpg", 0, 0)],
                                         [("x.jpg", 0, 0)], verbose=False)
    with pytest.raises(TypeError, match="MultiModalImageDataset"):
        a + single


def test_summary_is_logged_not_printed(diff_root, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="torchreid_sdtps.data.multimodal"):
        RGBNT201(root=diff_root, verbose=True)
    records = [r for r in caplog.records if r.name == "torchreid_sdtps.data.multimodal"]
    assert len(records) == 1 and "RGBNT201" in records[0].getMessage()
    assert "train" in records[0].getMessage()
    assert capsys.readouterr().out == ""


def test_add_offsets_noncontiguous_camids_without_clash(diff_root):
    a = RGBNT201(root=diff_root, verbose=False)
    a.train = [(s[0], s[1], 5 * s[2] + 1, s[3]) for s in a.train]  # camids {1, 6}
    total = a + RGBNT201(root=diff_root, verbose=False)
    first, second = total.train[: len(a.train)], total.train[len(a.train):]
    assert not {s[2] for s in first} & {s[2] for s in second}
    # same files in both sources: camera labels still follow the source of each sample
    assert [total.camera_label(s) for s in first] == [a.camera_label(s) for s in a.train]
    assert min(total.camera_label(s) for s in second) == a.num_cam_labels
