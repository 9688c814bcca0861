"""The checkpoint contract: round trip with meta, safe reading, unwrap, strict loading.

A checkpoint that does not fit its model (another SDTPS variant, a torchreid ``osnet_x0_25``,
a truncated or garbage file) is refused with the file, the keys and the model it holds named;
``strict=False`` loads what fits and says what it skipped.
"""
from __future__ import annotations

import logging
import os
import re

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


# ----------------------------------------------------------------------------- as a user runs it

def test_every_public_error_class_derives_from_sdtps_error():
    """One error root: walk the package; each exception class it defines is an SDTPSError
    (interrupts, subclasses of KeyboardInterrupt such as SIGTERM's ``Terminated``, are not errors)."""
    import importlib
    import inspect
    import pkgutil

    import torchreid_sdtps

    found = {}
    for info in pkgutil.walk_packages(torchreid_sdtps.__path__, "torchreid_sdtps."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and not issubclass(obj, KeyboardInterrupt)
                    and obj.__module__ == info.name and not name.startswith("_")):
                found[f"{info.name}.{name}"] = obj
    assert len(found) >= 15, sorted(found)
    outside = sorted(k for k, v in found.items() if not issubclass(v, SDTPSError))
    assert not outside, outside
    from torchreid_sdtps.data.multimodal import DatasetNotFoundError
    from torchreid_sdtps.deploy.onnx import ParityError

    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(ParityError, RuntimeError) and issubclass(C.CheckpointError, ValueError)


def _user_run(tool: str, *args: str, cwd=None) -> tuple[int, str]:
    """``python tools/<tool>.py ARGS`` as a user types it: exit code and stderr."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(repo / "tools" / f"{tool}.py"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    return proc.returncode, proc.stderr


def test_train_refuses_a_batch_that_is_not_p_by_k_before_writing_anything(tmp_path, tiny_opts):
    save = tmp_path / "log"
    code, err = _user_run("train", *tiny_opts, "data.root", str(tmp_path / "data"),
                          "data.save_dir", str(save), "train.batch_size", "6",
                          "sampler.num_instances", "4")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "train.batch_size=6 is not a multiple of sampler.num_instances=4" in line, err
    assert "Traceback" not in err
    assert not save.exists() and not (tmp_path / "data").exists()  # nothing written, no data made


def test_p_of_one_is_refused(make_cfg, builders):
    from torchreid_sdtps.data.checks import SamplerConfigError

    with pytest.raises(SamplerConfigError, match=r"train\.batch_size=4 / sampler\.num_instances=4 "
                       r"gives P = 1 identity per batch"):
        builders.build_all(make_cfg("train.batch_size", "4", "sampler.num_instances", "4"))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint of the tiny demo model, saved with its meta, as the train command does."""
    from conftest import tiny_cfg

    from torchreid_sdtps import build
    root = tmp_path_factory.mktemp("ckpt_data")
    cfg = tiny_cfg(root, root / "log")
    dm = build.build_datamanager(cfg)
    model = build.build_model(cfg, dm)
    path = C.Checkpointer(str(root)).save({"state_dict": model.state_dict(), "epoch": 1}, "m",
                                          meta=C.meta_of(model))
    return root, path, model


def _test_cmd(root, save, *extra):
    from conftest import TINY_OPTS

    from torchreid_sdtps import cli

    return cli.run("test", ["data.root", str(root), "data.save_dir", str(save), *TINY_OPTS,
                            *extra])


def test_test_command_refuses_a_checkpoint_of_another_model(tiny_ckpt, tmp_path, capsys):
    root, path, model = tiny_ckpt
    assert C.checkpoint_meta(C.read_checkpoint(path))["model_name"] == "sdtps_vit_tiny"
    save = tmp_path / "out"
    save.mkdir()
    (save / "test_results.json").write_text("old")
    code = _test_cmd(root, save, "model.load_weights", path, "model.name", "sdtps_vit_b16",
                     "model.pretrained", "False")
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit model sdtps_vit_b16" in err and path in err
    assert "the checkpoint holds sdtps_vit_tiny (num_classes 6, num_cameras 2)" in err
    assert re.search(r"\d+ missing, \d+ unexpected, \d+ mismatched keys", err)
    assert (save / "test_results.json").read_text() == "old"


def test_test_command_refuses_an_osnet_checkpoint_and_a_truncated_file(tiny_ckpt, tmp_path, capsys):
    from torchreid_sdtps import compat

    root, path, _ = tiny_ckpt
    osnet = compat.models().build_model("osnet_x0_25", num_classes=6, pretrained=False)
    other = str(tmp_path / "osnet.pth.tar")
    torch.save({"state_dict": osnet.state_dict(), "epoch": 1}, other)
    assert _test_cmd(root, tmp_path / "a", "model.load_weights", other) == 2
    err = capsys.readouterr().err
    assert "osnet.pth.tar' does not fit model sdtps_vit_tiny" in err and "unexpected" in err
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(path, "rb").read()[:4000])
    assert _test_cmd(root, tmp_path / "b", "model.load_weights", str(cut)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read checkpoint '{cut}': truncated" in err


def test_test_command_ranks_the_matching_checkpoint(tiny_ckpt, tmp_path):
    root, path, _ = tiny_ckpt
    assert _test_cmd(root, tmp_path / "ok", "model.load_weights", path) == 0
    assert (tmp_path / "ok" / "test_results.json").is_file()


def test_torchreids_own_loader_still_reads_our_checkpoints(tiny_ckpt):
    """torchreid's contract: its load_pretrained_weights keeps working for its scripts."""
    from torchreid_sdtps import compat

    _, path, model = tiny_ckpt
    fresh = _tiny(num_classes=6)
    compat.utils().load_pretrained_weights(fresh, path)
    assert torch.equal(fresh.state_dict()["guide.norm.weight"],
                       model.state_dict()["guide.norm.weight"])


def test_resume_goes_through_the_contract(saved, tmp_path):
    resume_from_checkpoint = C.Checkpointer.resume
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epoch, ckpt = resume_from_checkpoint(saved, model, opt)
    assert epoch == 3 and C.checkpoint_meta(ckpt)["model_name"] == "sdtps_vit_tiny"
    with pytest.raises(C.CheckpointMismatchError, match="mismatched"):
        resume_from_checkpoint(saved, _tiny(num_classes=9))
    bare = str(tmp_path / "bare.pth")
    torch.save({"state_dict": model.state_dict()}, bare)
    with pytest.raises(C.CheckpointError, match=r"bare\.pth' has no 'epoch'"):
        resume_from_checkpoint(bare, _tiny())


def test_checkpoints_honour_the_umask(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        path = C.save_checkpoint({"state_dict": tiny_model.state_dict()}, str(tmp_path / "a.pth"))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_previous_release_meta_still_rebuilds_its_model(tiny_ckpt, tmp_path):
    """The previous release stored ``sdtps_ratio`` / ``drop_path_rate`` in the meta's model
    kwargs and ``sdtps.sdtps_ratio`` / ``gumbel_tau: null`` in its config: such a checkpoint
    still rebuilds its model and loads strictly (the names are upgraded on read)."""
    import yaml

    from torchreid_sdtps.deploy import FeatureExtractor

    _, path, model = tiny_ckpt
    ckpt = C.read_checkpoint(path)
    meta = dict(ckpt["meta"])
    kwargs = dict(meta["model_kwargs"])
    kwargs["sdtps_ratio"] = kwargs.pop("ratio")
    kwargs["drop_path_rate"] = kwargs.pop("drop_path")
    tree = yaml.safe_load(meta["config"])
    tree["sdtps"]["sdtps_ratio"] = tree["sdtps"].pop("ratio")
    tree["sdtps"]["gumbel_tau"] = None
    old = {**ckpt, "meta": {**meta, "model_kwargs": kwargs, "config": yaml.safe_dump(tree)}}
    legacy = str(tmp_path / "legacy.pth.tar")
    torch.save(old, legacy)

    upgraded = C.checkpoint_meta(C.read_checkpoint(legacy))
    assert upgraded["model_kwargs"]["ratio"] == meta["model_kwargs"]["ratio"]
    assert "sdtps_ratio" not in upgraded["model_kwargs"] and "sdtps_ratio:" not in upgraded["config"]
    extractor = FeatureExtractor(legacy)
    for key, value in model.state_dict().items():
        assert torch.equal(extractor.model.state_dict()[key], value), key


def test_weightless_setting_changes_are_reported(tiny_ckpt, caplog):
    """A model built with another ``sdtps.ratio`` or ``mask_missing`` than the checkpoint was
    trained with takes its weights (no shape changes) but computes other features: the load
    says so instead of ranking it silently."""
    _, path, model = tiny_ckpt
    report = C.load_into_model(model, path)
    assert report.changed_settings == []
    meta = C.meta_of(model)
    changed = {**meta, "model_kwargs": {**meta["model_kwargs"], "ratio": 0.25,
                                        "mask_missing": True},
               "norm_mean": [0.485, 0.456, 0.406]}
    C.attach_meta(model, changed)
    try:
        with caplog.at_level(logging.WARNING, logger="torchreid_sdtps.checkpoint.load"):
            report = C.load_into_model(model, path)
    finally:
        C.attach_meta(model, meta)
    assert report.complete
    assert any(s.startswith("sdtps.ratio: checkpoint 0.5, model 0.25") for s in report.changed_settings)
    assert any(s.startswith("sdtps.mask_missing:") for s in report.changed_settings)
    assert any(s.startswith("data.norm_mean:") for s in report.changed_settings)
    assert "trained with other settings" in caplog.text and "sdtps.ratio" in caplog.text
