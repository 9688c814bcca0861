"""The checkpoint contract: round trip with meta, safe reading, unwrap, strict loading.

A checkpoint that does not fit its model (another SDTPS variant, a torchreid ``osnet_x0_25``,
a truncated or garbage file) is refused with the file, the keys and the model it holds named;
``strict=False`` loads what fits and says what it skipped.
"""
from __future__ import annotations

import logging
import os

import pytest
import torch
from torch import nn

from torchreid_sdtps import checkpoint as C
from torchreid_sdtps.errors import SDTPSError

torch.set_num_threads(1)


def _tiny(num_classes: int = 4, **kw) -> nn.Module:
    from torchreid_sdtps.models.net import sdtps_vit_tiny

    torch.manual_seed(0)
    return sdtps_vit_tiny(num_classes, pretrained=False, img_size=(64, 32), **kw)


META = {"format": C.META_FORMAT, "model_name": "sdtps_vit_tiny", "num_classes": 40,
        "model_kwargs": {"img_size": [64, 32]}}


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny()


@pytest.fixture
def saved(tiny_model, tmp_path):
    path = str(tmp_path / "model" / "model.pth.tar-3")
    C.save_checkpoint({"state_dict": tiny_model.state_dict(), "epoch": 3}, path,
                      meta=dict(META, num_classes=4))
    return path


def test_round_trip_with_meta(saved, tiny_model):
    ckpt = C.read_checkpoint(saved)
    assert ckpt["epoch"] == 3
    assert C.checkpoint_meta(ckpt)["model_name"] == "sdtps_vit_tiny"
    assert C.checkpoint_meta({"state_dict": {}}) is None
    other = _tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    report = C.load_into_model(other, saved)
    assert report.complete and report.meta["num_classes"] == 4
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert not [f for f in os.listdir(os.path.dirname(saved)) if f.endswith(".partial")]


def test_meta_must_hold_plain_types(tmp_path):
    with pytest.raises(TypeError, match=r"meta\['x'\] is a Tensor"):
        C.save_checkpoint({"state_dict": {}}, str(tmp_path / "a.pth"), meta={"x": torch.zeros(1)})
    assert not os.listdir(tmp_path)


def test_meta_of_another_format_is_refused():
    with pytest.raises(C.CheckpointError, match="meta format 7"):
        C.checkpoint_meta({"meta": {"format": 7}})


def test_state_dict_of_unwraps_module_prefix_and_wrappers(tiny_model):
    sd = tiny_model.state_dict()
    wrapped = {"model": {"state_dict": {"module." + k: v for k, v in sd.items()}}, "epoch": 1}
    assert list(C.state_dict_of(wrapped)) == list(sd)
    assert list(C.state_dict_of(nn.DataParallel(tiny_model).state_dict())) == list(sd)
    with pytest.raises(C.CheckpointError, match="x.pth holds a list"):
        C.state_dict_of([1, 2], "x.pth")
    with pytest.raises(C.CheckpointError, match="contains no tensors"):
        C.state_dict_of({"epoch": 3})


def test_module_prefixed_checkpoint_loads_into_a_plain_and_a_wrapped_model(tiny_model, tmp_path):
    path = str(tmp_path / "ddp.pth")
    torch.save({"state_dict": nn.DataParallel(tiny_model).state_dict()}, path)
    assert C.load_into_model(_tiny(), path).complete
    assert C.load_into_model(nn.DataParallel(_tiny()), path).complete


def test_wrong_model_is_refused_naming_keys_and_the_model_it_holds(saved):
    other = _tiny(num_classes=7, ori_head="per_modality")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(C.CheckpointMismatchError) as info:
        C.load_into_model(other, saved, model_name="sdtps_vit_b16")
    msg = str(info.value)
    assert saved in msg and "does not fit model sdtps_vit_b16" in msg
    assert "the checkpoint holds sdtps_vit_tiny (num_classes 4)" in msg
    assert "mismatched keys" in msg and "missing" in msg
    assert "neck_sdtps.classifier.weight: checkpoint (4, 576) vs model (7, 576)" in msg
    assert "\n" not in msg
    assert isinstance(info.value, SDTPSError) and isinstance(info.value, ValueError)
    for key, value in other.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_missing_and_unexpected_keys_are_listed(tiny_model):
    sd = dict(tiny_model.state_dict())
    removed = "guide.norm.weight"
    sd.pop(removed)
    sd["extra.head.weight"] = torch.zeros(2)
    with pytest.raises(C.CheckpointMismatchError, match=rf"1 missing, 1 unexpected, 0 mismatched "
                       rf"keys; missing: {removed}; unexpected: extra\.head\.weight"):
        C.load_into_model(_tiny(), {"state_dict": sd})


def test_torchreid_osnet_state_dict_is_refused(tmp_path):
    from torchreid_sdtps import compat

    osnet = compat.models().build_model("osnet_x0_25", num_classes=10, pretrained=False)
    path = str(tmp_path / "osnet_x0_25.pth.tar")
    torch.save({"state_dict": osnet.state_dict(), "epoch": 1, "rank1": 0.1}, path)
    with pytest.raises(C.CheckpointMismatchError, match=r"osnet_x0_25\.pth\.tar' does not fit "
                       r"model sdtps_vit_tiny: \d+ missing, \d+ unexpected"):
        C.load_into_model(_tiny(), path, model_name="sdtps_vit_tiny")


def test_strict_false_loads_what_fits_and_logs_what_it_skipped(saved, caplog):
    other = _tiny(num_classes=7)
    with caplog.at_level(logging.WARNING, logger="torchreid_sdtps"):
        report = C.load_into_model(other, saved, strict=False)
    assert not report.complete and len(report.mismatched) == 2
    assert "partial load (strict=False)" in caplog.text and "classifier.weight" in caplog.text
    ckpt = C.read_checkpoint(saved)["state_dict"]
    assert torch.equal(other.state_dict()["guide.norm.weight"], ckpt["guide.norm.weight"])
    assert "neck_ori.classifier.weight" not in report.loaded


def test_truncated_file_names_the_path_in_one_line(saved, tmp_path):
    data = open(saved, "rb").read()
    cut = str(tmp_path / "cut.pth")
    with open(cut, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(C.CheckpointError, match=r"cannot read checkpoint '.*cut\.pth': truncated") \
            as info:
        C.load_into_model(_tiny(), cut)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, what", [(b"", "the file is empty"),
                                           (b"hello, not a checkpoint\n" * 4, "not a checkpoint")])
def test_garbage_file_is_refused(tmp_path, content, what):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(C.CheckpointError, match=rf"garbage\.pth': {what}"):
        C.read_checkpoint(str(path))


def test_missing_file_and_non_dict():
    with pytest.raises(C.CheckpointNotFoundError, match="nowhere.pth") as info:
        C.read_checkpoint("nowhere.pth")
    assert isinstance(info.value, FileNotFoundError)


def test_non_dict_checkpoint(tmp_path):
    path = str(tmp_path / "list.pth")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(C.CheckpointError, match=r"list\.pth' holds a list"):
        C.read_checkpoint(path)


def test_torchreid_numpy_scalars_are_read_safely(tmp_path):
    import numpy as np

    path = str(tmp_path / "stock.pth.tar")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "rank1": np.float64(0.5)}, path)
    assert float(C.read_checkpoint(path)["rank1"]) == 0.5


def test_unsafe_pickle_needs_opt_in(tmp_path, monkeypatch):
    import argparse

    path = str(tmp_path / "args.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    monkeypatch.delenv(C.UNSAFE_PICKLE_ENV, raising=False)
    with pytest.raises(C.UnsafePickleError, match=r"args\.pth.*argparse\.Namespace.*"
                       r"allow_unsafe_pickle=True"):
        C.read_checkpoint(path)
    assert C.read_checkpoint(path, allow_unsafe_pickle=True)["args"].lr == 0.1
    monkeypatch.setenv(C.UNSAFE_PICKLE_ENV, "1")
    assert "args" in C.read_checkpoint(path)
