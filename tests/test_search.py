"""Feature files and gallery search: tools/extract.py (data set split, folder of triples) ->
feature file -> tools/search.py (feature file or one sample's images), top-k, threshold, JSON."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from _deploy import tiny_checkpoint

from torchreid_sdtps.cli import run
from torchreid_sdtps.cli.extract import main as main_extract
from torchreid_sdtps.cli.search import main as main_search
from torchreid_sdtps.deploy import FeatureExtractor
from torchreid_sdtps.deploy.exact import rank_results, topk_exact
from torchreid_sdtps.deploy.features import FeatureSet, save_features
from torchreid_sdtps.deploy.store import load_features

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny checkpoint, its query and gallery feature files written by tools/extract.py."""
    root = tmp_path_factory.mktemp("search")
    _, dm, _, ckpt = tiny_checkpoint(root, root / "log")
    out = {"root": root, "ckpt": ckpt, "dataset": dm.test_loader["synthetic_msreid"]["query"].dataset}
    for split in ("query", "gallery"):
        out[split] = str(root / f"{split}.pt")
        main_extract(["--weights", ckpt, "--dataset", "synthetic_msreid", "--split", split,
                      "--root", str(root), "-o", out[split]])
    return out


def search(query, gallery, topk=10, metric="euclidean", threshold=None):
    """The search path of tools/search.py: exact top-k, then the result dicts."""
    return rank_results(query, gallery, *topk_exact(query, gallery, topk, metric), threshold)


def _toy(features, pids=None) -> FeatureSet:
    n = len(features)
    return FeatureSet(torch.tensor(features, dtype=torch.float32), pids or list(range(n)),
                      [0] * n, [-1] * n, [(f"rgb{i}", f"ni{i}", f"ti{i}") for i in range(n)])


def test_extracted_file_matches_the_extractor(files):
    gallery = load_features(files["gallery"])
    ds = files["dataset"]
    assert len(gallery) == len(ds.gallery) == 24
    assert gallery.pids == [s[1] for s in ds.gallery]
    assert gallery.camids == [s[2] for s in ds.gallery]
    assert gallery.cam_labels == [ds.camera_label(s) for s in ds.gallery]
    assert gallery.paths == [tuple(s[0]) for s in ds.gallery]
    assert gallery.info["model"] == "sdtps_vit_tiny" and gallery.info["split"] == "gallery"
    fx = FeatureExtractor(files["ckpt"], device="cpu")
    torch.testing.assert_close(gallery.features[:4],
                               fx(gallery.paths[:4], cam_ids=gallery.cam_labels[:4]))


def test_search_ranks_nearest_first_with_threshold():
    gallery = _toy([[0, 0], [3, 0], [1, 0], [10, 0]])
    query = _toy([[0.9, 0], [50, 0]])
    res = search(query, gallery, topk=3)
    assert [m["index"] for m in res[0]["matches"]] == [2, 0, 1]
    assert res[0]["matches"][0]["distance"] == pytest.approx(0.01, abs=1e-5)  # squared euclid.
    assert [m["rank"] for m in res[0]["matches"]] == [1, 2, 3]
    limited = search(query, gallery, topk=3, threshold=1.0)
    assert [m["index"] for m in limited[0]["matches"]] == [2, 0] and not limited[0]["no_match"]
    assert limited[1]["matches"] == [] and limited[1]["no_match"]
    cos = search(_toy([[1, 0.1]]), _toy([[5, 0], [0, 1]]), topk=2, metric="cosine")
    assert cos[0]["matches"][0]["index"] == 0
    with pytest.raises(ValueError, match="feature sizes differ: queries D=3, gallery D=2"):
        search(_toy([[1, 2, 3]]), gallery)
    with pytest.raises(ValueError, match="metric must be one of"):
        search(query, gallery, metric="l1")


def test_search_tool_feature_files_and_json(files, tmp_path, capsys):
    out = tmp_path / "res.json"
    result = main_search(["--gallery", files["gallery"], "--query", files["query"], "--topk", "5",
                          "--json", str(out)])
    printed = capsys.readouterr().out
    with open(out, encoding="utf-8") as fh:
        saved = json.load(fh)
    assert saved["results"] == result["results"] and len(saved["results"]) == 24
    first = saved["results"][0]
    assert len(first["matches"]) == 5
    # query and gallery are the same split here: every query finds itself first
    assert all(r["matches"][0]["index"] == r["query"]["index"] for r in saved["results"])
    assert first["query"]["paths"][0] in printed and "euclidean dist" in printed


@pytest.fixture(scope="module")
def present_files(tmp_path_factory, files):
    """A tiny checkpoint with the presence-aware match (issue 25) and its gallery file."""
    root = files["root"]
    log = tmp_path_factory.mktemp("present")
    _, _, _, ckpt = tiny_checkpoint(root, log, "sdtps.mask_missing", "True",
                                    "sdtps.missing_match", "present")
    gallery = str(log / "gallery.pt")
    main_extract(["--weights", ckpt, "--dataset", "synthetic_msreid", "--split", "gallery",
                  "--root", str(root), "-o", gallery])
    return {"ckpt": ckpt, "gallery": gallery}


def test_search_tool_one_sample_with_a_missing_modality(present_files, capsys):
    """A query without NI is matched over RGB and TI only (never against a zero block)."""
    gallery = load_features(present_files["gallery"])
    rgb, _, ti = gallery.paths[5]
    cam = str(gallery.cam_labels[5])
    args = ["--gallery", present_files["gallery"], "--images", rgb, "none", ti, "--weights",
            present_files["ckpt"], "--cam", cam]
    res = main_search([*args, "--topk", "3"])["results"][0]
    fx = FeatureExtractor(present_files["ckpt"], device="cpu")
    feat = fx((rgb, None, ti), cam_ids=[int(cam)])
    expected = torch.cdist(feat, gallery.features).pow(2)[0].topk(3, largest=False)
    assert [m["index"] for m in res["matches"]] == expected.indices.tolist()
    assert res["query"]["paths"] == [rgb, "none", ti]
    # the same ranking as the match restricted to RGB and TI, each modality normalised
    q, g = feat.view(1, 2, 3, -1), gallery.features.view(len(gallery), 2, 3, -1)
    unit = lambda t: t / t.square().sum(dim=(1, 3), keepdim=True).sqrt()  # noqa: E731
    common = torch.einsum("ipmc,jpmc->jm", unit(q[:, :, [0, 2]]), unit(g[:, :, [0, 2]])).sum(1)
    assert [m["index"] for m in res["matches"]] == common.topk(3).indices.tolist()
    assert q[:, :, 1].abs().max() == 0
    nothing = main_search([*args, "--threshold", "-1"])
    assert nothing["results"][0]["no_match"]
    assert "no match within the distance threshold" in capsys.readouterr().out


def test_search_refuses_a_missing_modality_against_a_zero_block(files, tmp_path):
    """A model without the presence-aware match would compare a zero block: refused, for an
    images query and for a feature file marked with the modalities its samples lack."""
    gallery = load_features(files["gallery"])
    rgb, _, ti = gallery.paths[5]
    with pytest.raises(ValueError, match=r"lacks modality \['NI'\].*missing_match 'plain'"):
        main_search(["--gallery", files["gallery"], "--images", rgb, "none", ti, "--weights",
                     files["ckpt"], "--cam", str(gallery.cam_labels[5])])
    marked = load_features(files["query"])
    marked.info["missing_modalities"] = [[] for _ in range(len(marked))]
    marked.info["missing_modalities"][3] = ["TI"]
    save_features(marked, str(tmp_path / "q.pt"))
    with pytest.raises(ValueError, match=r"sample 3 lacks modality \['TI'\]"):
        main_search(["--gallery", files["gallery"], "--query", str(tmp_path / "q.pt")])


def test_extract_a_folder_of_triples(files, tmp_path):
    gallery = load_features(files["gallery"])
    folder = tmp_path / "mine"
    for mod, mdir in zip(("RGB", "NI", "TI"), ("rgb", "nir", "tir")):
        (folder / mdir).mkdir(parents=True)
        for i in (0, 1):
            shutil.copy(gallery.paths[i][("RGB", "NI", "TI").index(mod)],
                        folder / mdir / f"p{i}.jpg")
    out = str(tmp_path / "mine.pt")
    cam = gallery.cam_labels[0]
    assert cam == gallery.cam_labels[1]
    main_extract(["--weights", files["ckpt"], "--folder", str(folder), "--modality-dirs", "rgb",
                  "nir", "tir", "--cam", str(cam), "-o", out])
    mine = load_features(out)
    assert [p[1] for p in mine.paths] == [str(folder / "nir" / "p0.jpg"), str(folder / "nir" / "p1.jpg")]
    assert mine.pids == [-1, -1] and mine.cam_labels == [cam, cam]
    torch.testing.assert_close(mine.features, gallery.features[:2])


def test_bad_inputs_give_clear_errors(files, tmp_path, capsys):
    folder = tmp_path / "bad"
    for mdir in ("RGB", "NI", "TI"):
        (folder / mdir).mkdir(parents=True)
    gallery = load_features(files["gallery"])
    for mdir, src in zip(("RGB", "NI"), gallery.paths[0][:2]):
        shutil.copy(src, folder / mdir / "a.jpg")
    out = tmp_path / "bad.pt"
    args = ["--weights", files["ckpt"], "--folder", str(folder), "-o", str(out)]
    assert run("extract", args) == 2
    err = capsys.readouterr().err
    assert f"TI image missing: '{folder / 'TI' / 'a.jpg'}'" in err and not out.exists()
    not_features = tmp_path / "x.pt"
    torch.save({"a": 1}, not_features)
    assert run("search", ["--gallery", str(not_features), "--query", files["query"]]) == 2
    assert f"'{not_features}' is not a feature file" in capsys.readouterr().err
    assert run("search", ["--gallery", files["gallery"], "--images", "a.jpg", "b.jpg",
                          "--weights", files["ckpt"], "--cam", "0"]) == 2
    assert "sample 0 has 2 image(s); expected 3" in capsys.readouterr().err


def test_feature_file_roundtrip_and_checks(tmp_path):
    fs = _toy([[1, 2], [3, 4]], pids=[7, 8])
    fs.info = {"model": "m"}
    path = save_features(fs, str(tmp_path / "f.pt"))
    back = load_features(path)
    assert torch.equal(back.features, fs.features) and back.pids == [7, 8]
    assert back.paths == fs.paths and back.info == {"model": "m"}
    with pytest.raises(ValueError, match="all must be N"):
        FeatureSet(torch.zeros(3, 2), [1], [0], [0], [("a",)])
    with pytest.raises(FileNotFoundError, match="feature file not found"):
        load_features(str(tmp_path / "none.pt"))
