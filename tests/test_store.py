"""Feature stores (memory-mapped .npy shards, atomic writes, appends, the old .pt format) and
the exact chunked search (== a stable sort of the full distance matrix, any block sizes)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchreid_sdtps import compat
from torchreid_sdtps.deploy.exact import SearchError, rank_results, topk_exact
from torchreid_sdtps.deploy.features import FeatureSet, save_features
from torchreid_sdtps.deploy.store import FeatureStore, StoreError, load_features
from torchreid_sdtps.deploy.store_writer import StoreWriter, append, extract_to_store, write_store
from torchreid_sdtps.errors import SDTPSError

torch.set_num_threads(1)
PROV = {"format": 1, "model": "m", "checkpoint_sha256": "abc", "normalized": False,
        "feature_dim": 8}


def _data(n: int = 50, d: int = 8, seed: int = 0) -> tuple[np.ndarray, list, list]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    return feats, list(range(100, 100 + n)), [(f"rgb/{i}.jpg", f"ni/é{i}.jpg") for i in range(n)]


def _leftovers(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if "partial" in p or p.endswith(".old"))


def test_store_round_trip_maps_the_features(tmp_path):
    feats, pids, paths = _data()
    path = str(tmp_path / "g")
    store = write_store(path, feats, pids, [1] * 50, [2] * 50, paths, info={"split": "gallery"},
                        provenance=PROV)
    assert isinstance(store.shards[0], np.memmap) and store.shards[0].mode == "r"
    assert len(store) == 50 and store.dim == 8 and store.modalities == 2
    assert store.pids.tolist() == pids and store.camids.tolist() == [1] * 50
    assert store.cam_labels.tolist() == [2] * 50
    assert store.paths[3] == ("rgb/3.jpg", "ni/é3.jpg") and store.paths[-1] == paths[-1]
    assert store.paths[1:3] == paths[1:3]
    assert store.info == {"split": "gallery", "provenance": PROV} and store.provenance == PROV
    np.testing.assert_array_equal(store.rows(0, 50), feats)
    np.testing.assert_array_equal(store.take([7, 2, 7]), feats[[7, 2, 7]])
    blocks = list(store.chunks(16))
    assert [s for s, _ in blocks] == [0, 16, 32, 48]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), feats)
    assert load_features(path + "/store.json").pids.tolist() == pids
    half = write_store(str(tmp_path / "h"), feats, dtype="float16")
    assert half.shards[0].dtype == np.float16 and half.rows(0, 2).dtype == np.float32
    np.testing.assert_allclose(half.rows(0, 50), feats, atol=1e-2)


def test_writer_in_chunks_is_atomic_and_honours_the_umask(tmp_path):
    feats, pids, paths = _data()
    path = tmp_path / "g"
    old = os.umask(0o027)
    try:
        with StoreWriter(str(path), 50, 8, 2) as w:
            for s in range(0, 50, 20):
                w.write(torch.from_numpy(feats[s:s + 20]), pids[s:s + 20], None, None,
                        paths[s:s + 20])
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o750
    assert {os.stat(path / f).st_mode & 0o777 for f in os.listdir(path)} == {0o640}
    np.testing.assert_array_equal(FeatureStore(str(path)).rows(0, 50), feats)
    # an error inside the block: no store, no temporary folder; an existing store is kept
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(str(tmp_path / "new"), 50, 8, 2) as w:
            w.write(feats[:10], paths=paths[:10])
            raise RuntimeError("boom")
    with pytest.raises(StoreError, match="10 samples written; expected 50"):
        with StoreWriter(str(path), 50, 8, 2, overwrite=True) as w:
            w.write(feats[:10], paths=paths[:10])
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []
    assert len(FeatureStore(str(path))) == 50
    with pytest.raises(StoreError, match="exists; remove it"):
        StoreWriter(str(path), 1, 8, 2)
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreError, match="is not a feature store: not replacing it"):
        StoreWriter(str(tmp_path / "other"), 1, 8, 2, overwrite=True)
    with StoreWriter(str(tmp_path / "w"), 3, 8, 2) as w:
        with pytest.raises(StoreError, match=r"chunk of shape \(3, 4\); expected \(n, 8\)"):
            w.write(np.zeros((3, 4)))
        with pytest.raises(StoreError, match="sample 1 has 1 path"):
            w.write(np.zeros((3, 8)), paths=[("a", "b"), ("a",), ("a", "b")])
        w.write(np.zeros((3, 8)))
    assert FeatureStore(str(tmp_path / "w")).paths[0] == ("", "")


def test_append_adds_a_shard_atomically(tmp_path):
    feats, pids, paths = _data(60)
    store = write_store(str(tmp_path / "g"), feats[:40], pids[:40], paths=paths[:40])
    with append(store, 20) as w:
        w.write(feats[40:], pids[40:], paths=paths[40:])
    grown = FeatureStore(store.path)
    assert len(grown) == 60 and len(grown.shards) == 2 and grown.paths[45] == paths[45]
    np.testing.assert_array_equal(grown.rows(30, 50), feats[30:50])
    np.testing.assert_array_equal(grown.take([59, 0, 41]), feats[[59, 0, 41]])
    assert grown.pids.tolist() == pids
    before = sorted(os.listdir(store.path))
    with pytest.raises(RuntimeError, match="boom"):
        with append(grown, 5) as w:
            w.write(feats[:5])
            raise RuntimeError("boom")
    assert sorted(os.listdir(store.path)) == before and len(FeatureStore(store.path)) == 60


def test_load_validates_and_reads_old_pt_files(tmp_path):
    feats, pids, paths = _data(6)
    pt = str(tmp_path / "old.pt")
    save_features(FeatureSet(torch.from_numpy(feats), pids, [0] * 6, [-1] * 6, paths,
                             {"provenance": PROV}), pt)
    old = load_features(pt)
    assert isinstance(old, FeatureSet) and old.pids == pids and old.paths == paths
    store = write_store(str(tmp_path / "s"), feats, pids, paths=paths)
    meta_file = os.path.join(store.path, "store.json")
    with open(meta_file) as fh:
        meta = json.load(fh)
    meta["shards"][0]["num"] = 7
    with open(meta_file, "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(StoreError, match=r"part-00000.features.npy' holds an array of shape "
                       r"\(6, 8\); store.json says \(7, 8\)"):
        load_features(store.path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="folder without store.json"):
        load_features(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="feature file not found"):
        load_features(str(tmp_path / "none.pt"))
    with open(meta_file, "w") as fh:
        fh.write("{not json")
    with pytest.raises(SDTPSError, match="cannot read '.*store.json'"):
        load_features(store.path)


def test_extract_to_store_in_chunks_without_partial_output(tmp_path):
    feats, _, paths = _data(23)
    calls = []

    def extractor(batch, cam_ids=None):
        calls.append((len(batch), cam_ids))
        idx = [paths.index(tuple(s)) for s in batch]
        if len(calls) == 99:
            raise RuntimeError("unreadable image")
        return torch.from_numpy(feats[idx])

    extractor.batch_size, extractor.normalize = 4, True
    store = extract_to_store(extractor, str(tmp_path / "s"), paths, cam_labels=list(range(23)),
                             chunk=10, progress=False, provenance=lambda d: dict(PROV, dim=d),
                             info={"split": "query"})
    assert [c[0] for c in calls] == [10, 10, 3] and calls[2][1] == [20, 21, 22]
    np.testing.assert_array_equal(store.rows(0, 23), feats)
    assert store.normalized and store.provenance["dim"] == 8 and store.pids[0] == -1
    assert store.cam_labels.tolist() == list(range(23))
    calls[:] = [None] * 97
    with pytest.raises(RuntimeError, match="unreadable image"):
        extract_to_store(extractor, str(tmp_path / "t"), paths, chunk=10, progress=False)
    assert not (tmp_path / "t").exists() and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- exact search

def _reference(q: torch.Tensor, g: torch.Tensor, metric: str, k: int):
    q64, g64 = q.double(), g.double()
    d = (torch.cdist(q64, g64).pow(2) if metric == "euclidean"
         else 1 - F.normalize(q64, dim=1) @ F.normalize(g64, dim=1).t())
    v, i = torch.sort(d, dim=1, stable=True)
    return v[:, :k], i[:, :k]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_exact_equals_brute_force(tmp_path, metric):
    torch.manual_seed(0)
    g, q = torch.randn(300, 16), torch.randn(23, 16)
    g[[100, 250]] = g[3].clone()  # duplicates tie exactly: lower index first
    g[10:40] = g[7].clone()       # more duplicates than a tile keeps as candidates
    q[0], q[1] = g[3], g[7]
    ref_v, ref_i = _reference(q, g, metric, 10)
    store = write_store(str(tmp_path / "g"), g.numpy())
    for gallery, g_rows, q_rows in ((g, 7, 5), (g, 1, 1024), (g, 64, 1), (g, 300, 23),
                                    (g, None, 1024), (store, 13, 5), (store, None, 1024),
                                    (g.numpy(), 64, 5)):
        v, i = topk_exact(q, gallery, 10, metric, query_rows=q_rows, gallery_rows=g_rows)
        assert torch.equal(i, ref_i), (type(gallery), g_rows, q_rows)
        torch.testing.assert_close(v, ref_v, rtol=1e-9, atol=1e-9)
    assert ref_i[0, :3].tolist() == [3, 100, 250] and ref_i[1].tolist() == [7, *range(10, 19)]
    # and torchreid's brute force (compute_distance_matrix + topk) where nothing ties
    brute_v, brute_i = compat.metrics().compute_distance_matrix(q[2:], g, metric).topk(
        10, dim=1, largest=False)
    assert torch.equal(brute_i, ref_i[2:])
    torch.testing.assert_close(brute_v.double(), ref_v[2:], rtol=1e-4, atol=1e-4)


def test_exact_search_results_and_errors(tmp_path):
    feats, pids, paths = _data(30, 4)
    gallery = write_store(str(tmp_path / "g"), feats, pids, [5] * 30, None, paths)
    query = FeatureSet(torch.from_numpy(feats[:2]), [1, 2], [0, 0], [-1, -1], paths[:2])
    v, i = topk_exact(query, gallery, 50)  # k is capped at the gallery size
    assert i.shape == (2, 30) and i[:, 0].tolist() == [0, 1] and v[0, 0] == 0
    res = rank_results(query, gallery, v, i, threshold=float(v[0, 2]))
    assert [m["index"] for m in res[0]["matches"]] == i[0, :3].tolist()
    first = res[0]["matches"][0]
    assert first == {"rank": 1, "index": 0, "distance": 0.0, "pid": 100, "camid": 5,
                     "paths": list(paths[0])}
    assert res[0]["query"] == {"index": 0, "paths": list(paths[0]), "pid": 1, "camid": 0}
    none = rank_results(query, gallery, v, i, threshold=-1.0)
    assert none[1]["matches"] == [] and none[1]["no_match"]
    with pytest.raises(SearchError, match="feature sizes differ: queries D=3, gallery D=4"):
        topk_exact(torch.zeros(1, 3), gallery)
    with pytest.raises(SearchError, match="metric must be one of"):
        topk_exact(query, gallery, metric="l1")
    with pytest.raises(SearchError, match="topk must be >= 1"):
        topk_exact(query, gallery, 0)
    with pytest.raises(SearchError, match="empty feature set"):
        topk_exact(torch.zeros(0, 4), gallery)


def test_extract_and_search_commands_with_stores(tmp_path):
    from _deploy import tiny_checkpoint

    from torchreid_sdtps.cli import extract
    from torchreid_sdtps.cli import search as search_cmd

    _, _, _, ckpt = tiny_checkpoint(tmp_path, tmp_path / "log")
    out = {}
    for split, suffix in (("gallery", ""), ("gallery", ".pt"), ("query", "")):
        out[split + suffix] = str(tmp_path / f"{split}{suffix}")
        extract.main(["--weights", ckpt, "--dataset", "synthetic_msreid", "--split", split,
                      "--root", str(tmp_path), "-o", out[split + suffix]])
    store, pt = load_features(out["gallery"]), load_features(out["gallery.pt"])
    assert isinstance(store, FeatureStore) and isinstance(pt, FeatureSet)
    np.testing.assert_array_equal(store.rows(0, len(store)), pt.features.numpy())
    assert store.paths[:] == pt.paths and store.pids.tolist() == pt.pids
    assert store.provenance == pt.info["provenance"]
    assert store.info["split"] == "gallery" and not store.normalized
    by_store = search_cmd.main(["--gallery", out["gallery"], "--query", out["query"]])
    by_pt = search_cmd.main(["--gallery", out["gallery.pt"], "--query", out["query"]])
    assert by_store["results"] == by_pt["results"]
    # query and gallery are the same test split of the tiny set: each query finds itself
    assert all(r["matches"][0]["paths"] == r["query"]["paths"] for r in by_store["results"])
    shutil.rmtree(out["gallery"])
