"""Provenance on a *trained* checkpoint (issue 27.3): the deploy fixture is really trained (its
neck and camera term change the features), every compared provenance field refuses a search
when it differs, and the fields that come from how features were made (camera term,
checkpoint, normalisation, backend) are recorded from what actually happened.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _deploy import EPOCHS, tiny_checkpoint

from torchreid_sdtps import cli
from torchreid_sdtps.cli.extract import main as main_extract
from torchreid_sdtps.deploy import FeatureExtractor
from torchreid_sdtps.deploy.features import save_features
from torchreid_sdtps.deploy.provenance import COMPARED, ProvenanceError, check, record
from torchreid_sdtps.deploy.store import load_features

#: for each compared field, the value a differently made feature file would record
OTHER = {"model": "sdtps_vit_b16", "checkpoint_sha256": "0123456789abcdef", "normalized": True,
         "camera_term": "off", "input_size": [128, 64], "modalities": ["RGB", "NI"],
         "feature_dim": 384, "test_feature": "ori"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    _, dm, engine, ckpt = tiny_checkpoint(root, root / "log")
    gallery = str(root / "gallery.pt")
    main_extract(["--weights", ckpt, "--dataset", "synthetic_msreid", "--split", "gallery",
                  "--root", str(root), "-o", gallery])
    return {"root": root, "ckpt": ckpt, "gallery": gallery, "engine": engine,
            "fx": FeatureExtractor(ckpt, device="cpu")}


def test_the_deploy_checkpoint_is_trained(tiny):
    """The fixture is a trained model: epochs run, necks with real running statistics, and a
    camera term that changes the features (an untrained SIE term is ~0.02 x sie_coe)."""
    ckpt = torch.load(tiny["ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == EPOCHS
    state = ckpt["state_dict"]
    for neck in ("neck_sdtps", "neck_ori"):
        mean, var = state[f"{neck}.bn.running_mean"], state[f"{neck}.bn.running_var"]
        assert int(state[f"{neck}.bn.num_batches_tracked"]) >= 2 * EPOCHS  # 2-3 batches an epoch
        assert mean.abs().mean() > 0.05 or (var - 1).abs().mean() > 0.2, neck
    gallery = load_features(tiny["gallery"])
    fx = tiny["fx"]
    paths, cams = gallery.paths[:6], gallery.cam_labels[:6]
    with_cams = fx(paths, cam_ids=cams)
    torch.testing.assert_close(with_cams, gallery.features[:6])
    other = fx(paths, cam_ids=[1 - c for c in cams])
    without = fx(paths)
    scale = with_cams.norm(dim=1).mean()
    assert (with_cams - other).norm(dim=1).mean() > 0.02 * scale
    assert (with_cams - without).norm(dim=1).mean() > 0.02 * scale
    # the neck matters: the same model with neck_feat "before" gives other features
    model = fx.model
    model.neck_feat = "before"
    try:
        before = fx(paths, cam_ids=cams)
    finally:
        model.neck_feat = "after"
    assert (before - with_cams).norm(dim=1).mean() > 0.1 * scale


@pytest.mark.parametrize("field", COMPARED)
def test_search_refuses_each_differing_field(tiny, tmp_path, field, capsys):
    assert set(OTHER) == set(COMPARED)  # a new compared field needs its own case here
    gallery = load_features(tiny["gallery"])
    rec = gallery.info["provenance"]
    assert rec[field] != OTHER[field]
    query = load_features(tiny["gallery"])
    query.info["provenance"] = {**rec, field: OTHER[field]}
    qpath = save_features(query, str(tmp_path / "q.pt"))
    with pytest.raises(ProvenanceError, match=f"{field}: query "):
        check(query.info["provenance"], rec)
    assert cli.run("search", ["--gallery", tiny["gallery"], "--query", qpath, "--topk", "1"]) == 2
    assert f"{field}: {qpath} {OTHER[field]!r} vs {tiny['gallery']} {rec[field]!r}" in \
        capsys.readouterr().err
    # the same record, every field equal: no refusal, no warning
    assert check(dict(rec), rec) == []


def test_backend_is_recorded_not_compared(tiny):
    """The backend (PyTorch or ONNX Runtime) is recorded but mixing them is allowed: the
    export's parity check bounds the difference (deploy/provenance.py)."""
    fx = tiny["fx"]
    a = record(fx, tiny["ckpt"], 10, cameras_given=True, backend="torch")
    b = record(fx, tiny["ckpt"], 10, cameras_given=True, backend="onnxruntime")
    assert (a["backend"], b["backend"]) == ("torch", "onnxruntime")
    assert "backend" not in COMPARED and check(a, b) == []


def test_the_camera_term_is_recorded_as_given(tiny, tmp_path, capsys):
    """A folder extracted without --cam leaves the SIE term out and records "off"; searching the
    gallery (extracted with the data set's cameras) is refused on that field."""
    gallery = load_features(tiny["gallery"])
    assert gallery.info["provenance"]["camera_term"] == "used"
    folder = tmp_path / "folder"
    for i, paths in enumerate(gallery.paths[:3]):
        for mod, path in zip(("RGB", "NI", "TI"), paths):
            (folder / mod).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / mod / f"s{i}{Path(path).suffix}")
    for cam, term in ((None, "off"), (1, "used")):
        out = str(tmp_path / f"folder_{term}.pt")
        extra = [] if cam is None else ["--cam", str(cam)]
        main_extract(["--weights", tiny["ckpt"], "--folder", str(folder), "-o", out, *extra])
        rec = load_features(out).info["provenance"]
        assert rec["camera_term"] == term
        assert rec["camera_source"] == ("" if cam is None else "--cam 1")
    off = str(tmp_path / "folder_off.pt")
    code = cli.run("search", ["--gallery", tiny["gallery"], "--query", off, "--topk", "1"])
    assert code == 2
    assert f"camera_term: {off} 'off' vs {tiny['gallery']} 'used'" in capsys.readouterr().err
    assert cli.run("search", ["--gallery", tiny["gallery"], "--query",
                              str(tmp_path / "folder_used.pt"), "--topk", "1"]) == 0


def test_another_checkpoint_is_refused_a_copied_one_is_not(tiny, tmp_path, capsys):
    copy = str(tmp_path / "renamed.pth.tar")
    shutil.copyfile(tiny["ckpt"], copy)
    fx = tiny["fx"]
    assert record(fx, copy, 10, True)["checkpoint_sha256"] == \
        record(fx, tiny["ckpt"], 10, True)["checkpoint_sha256"]
    # another checkpoint of the same model (one BN statistic changed): other features
    state = torch.load(tiny["ckpt"], map_location="cpu", weights_only=False)
    state["state_dict"]["neck_ori.bn.running_mean"] += 1.0
    other = str(tmp_path / "other.pth.tar")
    torch.save(state, other)
    query = str(tmp_path / "q_other.pt")
    main_extract(["--weights", other, "--dataset", "synthetic_msreid", "--split", "query",
                  "--root", str(tiny["root"]), "-o", query])
    assert cli.run("search", ["--gallery", tiny["gallery"], "--query", query]) == 2
    assert f"checkpoint_sha256: {query} " in capsys.readouterr().err


def test_normalisation_is_recorded_as_done(tiny, tmp_path, capsys):
    """--normalize gives unit-norm features and records it; the raw gallery then refuses them."""
    query = str(tmp_path / "q_norm.pt")
    main_extract(["--weights", tiny["ckpt"], "--dataset", "synthetic_msreid", "--split", "query",
                  "--root", str(tiny["root"]), "--normalize", "-o", query])
    fs = load_features(query)
    assert fs.info["provenance"]["normalized"] is True
    torch.testing.assert_close(fs.features.norm(dim=1), torch.ones(len(fs)))
    assert load_features(tiny["gallery"]).info["provenance"]["normalized"] is False
    assert cli.run("search", ["--gallery", tiny["gallery"], "--query", query]) == 2
    assert f"normalized: {query} True vs {tiny['gallery']} False" in capsys.readouterr().err
