"""FAISS gallery indexes: build / open / search / add round trips against the exact search,
the provenance refusal, the index command and ``search --index``, and the bench_search smoke
run. Skipped only where faiss is not installed (``make test`` installs it: the ``index``
extra)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from torchreid_sdtps.cli import index as index_cmd  # noqa: E402
from torchreid_sdtps.cli import run  # noqa: E402
from torchreid_sdtps.cli import search as search_cmd  # noqa: E402
from torchreid_sdtps.deploy.exact import SearchError, topk_exact  # noqa: E402
from torchreid_sdtps.deploy.index import KINDS, GalleryIndex, GalleryIndexError  # noqa: E402
from torchreid_sdtps.deploy.provenance import ProvenanceError  # noqa: E402
from torchreid_sdtps.deploy.store import FeatureStore  # noqa: E402
from torchreid_sdtps.deploy.store_writer import write_store  # noqa: E402

torch.set_num_threads(1)
PROV = {"format": 1, "model": "sdtps_vit_tiny", "checkpoint_sha256": "0123", "normalized": True,
        "camera_term": "none", "input_size": [64, 32], "modalities": ["RGB", "NI", "TI"],
        "feature_dim": 16, "test_feature": "concat"}


def _clustered(n: int, seed: int, ids: int = 40, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((ids, dim)).astype(np.float32)
    pids = rng.integers(0, ids, n)
    x = centers[pids] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), pids


def _store(path, n: int, seed: int, normalized: bool = True, prov: dict | None = None,
           first: int = 0) -> FeatureStore:
    x, pids = _clustered(n, seed)
    if not normalized:
        x = x * 3.0
    paths = [(f"rgb/{first + i}.jpg", f"ni/{first + i}.jpg", f"ti/{first + i}.jpg")
             for i in range(n)]
    return write_store(str(path), x, pids, [0] * n, [-1] * n, paths, normalized=normalized,
                       provenance=dict(prov or PROV, normalized=normalized))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    return {"root": root, "gallery": _store(root / "gallery", 2000, 0),
            "query": _store(root / "query", 40, 1)}


def _recall(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / a.shape[1]
                          for x, y in zip(a, b)]))


@pytest.mark.parametrize("kind", KINDS)
def test_build_open_search_matches_exact(data, kind, tmp_path):
    gallery, query = data["gallery"], data["query"]
    ev, ei = topk_exact(query, gallery, 10, "cosine")
    built = GalleryIndex.build(gallery, str(tmp_path / "idx"), kind)
    assert built.meta["metric"] == "ip" and built.index.ntotal == 2000
    opened = GalleryIndex.open(str(tmp_path / "idx"))
    v, i = opened.search(query, 10, "cosine")
    v2, i2 = built.search(query, 10, "cosine")
    assert torch.equal(i, i2)
    if kind == "flat":  # exact: the same entries and float64 distances as the exact search
        assert torch.equal(i, ei) and torch.equal(v, ev)
    else:
        assert _recall(i, ei) >= 0.9
    # returned distances are the exact ones of the entries returned, in order
    found = i >= 0
    torch.testing.assert_close(v[found], (1 - torch.from_numpy(
        query.rows(0, 40)).double().unsqueeze(1).mul(
        torch.from_numpy(gallery.take(i.clamp(min=0).reshape(-1))).double().reshape(40, 10, 16)
    ).sum(-1))[found], rtol=1e-6, atol=1e-6)
    assert (v[:, 1:] >= v[:, :-1]).all()
    info = opened.info()
    assert info["kind"] == kind and info["num"] == 2000 and info["provenance"] == PROV
    assert os.path.realpath(info["store"]) == os.path.realpath(gallery.path)


def test_euclidean_on_l2_index_and_parameter_errors(tmp_path):
    raw = _store(tmp_path / "raw", 500, 0, normalized=False)
    q = _store(tmp_path / "rq", 10, 1, normalized=False)
    idx = GalleryIndex.build(raw, str(tmp_path / "raw.index"), "ivf_flat", nlist=8, nprobe=8)
    assert idx.meta["metric"] == "l2" and idx.meta["params"]["nlist"] == 8
    ev, ei = topk_exact(q, raw, 5)
    v, i = idx.search(q, 5)  # nprobe = nlist: every cell, exact
    assert torch.equal(i, ei) and torch.equal(v, ev)
    with pytest.raises(SearchError, match="ranks unnormalised features by L2; cosine needs"):
        idx.search(q, 5, "cosine")
    with pytest.raises(SearchError, match="ef_search applies to HNSW"):
        idx.search(q, 5, ef_search=3)
    with pytest.raises(GalleryIndexError, match=r"'flat' has no parameter\(s\) \['nlist'\]"):
        GalleryIndex.build(raw, str(tmp_path / "x"), "flat", nlist=3)
    with pytest.raises(GalleryIndexError, match="exists; remove it or pass overwrite"):
        GalleryIndex.build(raw, str(tmp_path / "raw.index"), "flat")
    with pytest.raises(GalleryIndexError, match="kind must be one of"):
        GalleryIndex.build(raw, str(tmp_path / "y"), "lsh")
    with pytest.raises(FileNotFoundError, match="no index in"):
        GalleryIndex.open(str(tmp_path / "nothing"))


@pytest.mark.parametrize("kind, params", [("ivf_flat", {}), ("hnsw", {}),
                                           ("ivf_pq", {"nlist": 16, "nprobe": 16, "refine": 100})])
def test_add_extends_index_and_store_without_rebuilding(data, kind, params, tmp_path):
    first = _store(tmp_path / "g", 1200, 0)
    idx = GalleryIndex.build(first, str(tmp_path / "g.index"), kind, **params)
    trained = idx.meta["params"]
    new = _store(tmp_path / "new", 300, 5, first=1200)
    assert idx.add(new.path) == 1500
    reopened = GalleryIndex.open(str(tmp_path / "g.index"))
    assert reopened.index.ntotal == 1500 == len(reopened.store)
    assert reopened.meta["params"] == trained
    assert reopened.store.paths[1300] == ("rgb/1300.jpg", "ni/1300.jpg", "ti/1300.jpg")
    whole = np.concatenate([first.rows(0, 1200), new.rows(0, 300)])
    np.testing.assert_array_equal(reopened.store.rows(0, 1500), whole)
    # the added samples are found: each new sample's nearest entry is itself
    v, i = reopened.search(new, 1, "cosine")
    assert (i[:, 0] == torch.arange(1200, 1500)).float().mean() >= 0.95
    ev, ei = topk_exact(data["query"], reopened.store, 10, "cosine")
    assert _recall(reopened.search(data["query"], 10, "cosine")[1], ei) >= 0.9
    with pytest.raises(GalleryIndexError, match="holds D=16 features \\(normalized=False\\)"):
        reopened.add(_store(tmp_path / "raw", 5, 1, normalized=False))


def test_index_refuses_features_of_another_model(data, tmp_path):
    idx = GalleryIndex.build(data["gallery"], str(tmp_path / "idx"), "flat")
    other = _store(tmp_path / "other", 10, 1, prov=dict(PROV, checkpoint_sha256="ffff"))
    with pytest.raises(ProvenanceError, match="checkpoint_sha256: the queries '0123'|checkpoint"):
        idx.search(other, 5)
    with pytest.raises(ProvenanceError, match="checkpoint_sha256"):
        idx.add(other)
    assert GalleryIndex.open(str(tmp_path / "idx")).index.ntotal == 2000
    with pytest.raises(ProvenanceError, match="checkpoint_sha256"):
        search_cmd.main(["--index", str(tmp_path / "idx"), "--query", other.path])


def test_index_command_and_search_with_index(data, tmp_path, capsys):
    gallery = write_store(str(tmp_path / "g"), data["gallery"].rows(0, 2000),
                          data["gallery"].pids, paths=data["gallery"].paths[:],
                          normalized=True, provenance=PROV)
    built = index_cmd.main(["build", gallery.path, "--kind", "ivf_flat", "--nlist", "16"])
    assert built["kind"] == "ivf_flat" and built["params"]["nlist"] == 16
    out = gallery.path + ".index"
    assert "ivf_flat index (ip) of 2000 samples" in capsys.readouterr().out
    info = index_cmd.main(["info", out])
    assert json.loads(capsys.readouterr().out)["num"] == 2000 == info["num"]
    query = data["query"].path
    exact = search_cmd.main(["--gallery", gallery.path, "--query", query, "--metric", "cosine"])
    approx = search_cmd.main(["--index", out, "--query", query, "--metric", "cosine",
                              "--nprobe", "16", "--json", str(tmp_path / "hits.json")])
    assert approx["results"] == exact["results"]  # all 16 cells probed: exact
    saved = json.loads((tmp_path / "hits.json").read_text())
    assert saved["index"] == out and saved["results"] == approx["results"]
    new = _store(tmp_path / "new", 50, 7, first=2000)
    index_cmd.main(["add", out, new.path])
    grown = search_cmd.main(["--index", out, "--query", new.path, "--topk", "1",
                             "--metric", "cosine", "--nprobe", "16"])
    assert [r["matches"][0]["index"] for r in grown["results"]] == list(range(2000, 2050))
    capsys.readouterr()
    assert run("search", ["--gallery", str(tmp_path / "elsewhere"), "--index", out,
                          "--query", query]) == 2
    assert "is not the store of --index" in capsys.readouterr().err
    assert run("search", ["--gallery", gallery.path, "--query", query, "--nprobe", "3"]) == 2
    assert "--nprobe and --ef-search apply to an --index search" in capsys.readouterr().err
    assert run("index", ["build", gallery.path, "--kind", "flat"]) == 2
    assert "exists; remove it or pass overwrite" in capsys.readouterr().err
    assert run("index", ["info", str(tmp_path / "none")]) == 2
    assert "no index in" in capsys.readouterr().err


def test_bench_search_smoke(benchmark_module, tmp_path, capsys):
    bench = benchmark_module("bench_search")
    # two backends (each is a fresh process that imports torch: seconds on a busy machine);
    # every index kind is checked against the exact search above
    r = bench.main(["--gallery", "400", "--dim", "16", "--queries", "8", "--json",
                    "--backends", "faiss_flat", "faiss_hnsw", "--out", str(tmp_path / "R.md")])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"backends"}
    assert list(printed["backends"]) == ["exact", "faiss_flat", "faiss_hnsw"]
    for v in printed["backends"].values():
        assert set(v) == {"build_s", "qps", "recall_at_10", "peak_rss_gb"}
        assert v["qps"] > 0 and v["peak_rss_gb"] > 0 and 0 <= v["recall_at_10"] <= 1
    assert printed["backends"]["exact"]["recall_at_10"] == 1.0
    assert printed["backends"]["faiss_flat"]["recall_at_10"] == 1.0
    assert printed == {"backends": r["backends"]}
    text = (tmp_path / "R.md").read_text()
    assert bench.BEGIN in text and "| faiss_hnsw |" in text and "recall@10" in text
