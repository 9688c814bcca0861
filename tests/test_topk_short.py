"""Top-k is honest: a gallery smaller than ``--topk``, or an index search that finds fewer, is
said once per command and recorded in the JSON; ``--fill-exact`` completes an index search."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchreid_sdtps.cli import search as search_cmd
from torchreid_sdtps.deploy.store_writer import write_store

torch.set_num_threads(1)
PROV = {"format": 1, "model": "sdtps_vit_tiny", "checkpoint_sha256": "0123", "normalized": True,
        "camera_term": "none", "input_size": [64, 32], "modalities": ["RGB", "NI", "TI"],
        "feature_dim": 16, "test_feature": "concat"}


def _store(path, n: int, seed: int):
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [(f"rgb/{i}.jpg", f"ni/{i}.jpg", f"ti/{i}.jpg") for i in range(n)]
    return write_store(str(path), x, np.arange(n), [0] * n, [-1] * n, paths, normalized=True,
                       provenance=PROV)


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning: --topk")]


def test_a_gallery_smaller_than_k_is_said_once_and_recorded(tmp_path, capsys):
    gallery, query = _store(tmp_path / "g", 12, 0), _store(tmp_path / "q", 5, 1)
    out = tmp_path / "r.json"
    res = search_cmd.main(["--gallery", gallery.path, "--query", query.path, "--topk", "50",
                           "--json", str(out)])
    warned = _warnings(capsys.readouterr().err)
    assert warned == ["warning: --topk 50: the gallery holds 12 entries, so each query lists "
                      "at most 12"]
    assert all(len(r["matches"]) == 12 for r in res["results"])
    record = json.loads(out.read_text())["short_of_topk"]
    assert record == {"topk": 50, "gallery_size": 12, "returned_min": 12, "returned_max": 12,
                      "short_queries": [], "filled_from_exact": []}
    # k within the gallery: no note, and the JSON says so (null)
    search_cmd.main(["--gallery", gallery.path, "--query", query.path, "--topk", "12",
                     "--json", str(out)])
    assert _warnings(capsys.readouterr().err) == []
    assert json.loads(out.read_text())["short_of_topk"] is None


def test_an_index_returning_fewer_is_said_and_can_be_filled(tmp_path, capsys):
    pytest.importorskip("faiss")
    from torchreid_sdtps.cli import index as index_cmd

    gallery, query = _store(tmp_path / "g", 400, 0), _store(tmp_path / "q", 20, 1)
    index_cmd.main(["build", gallery.path, "--kind", "ivf_flat", "--nlist", "16",
                    "--nprobe", "1", "-o", str(tmp_path / "ivf")])
    capsys.readouterr()
    out = tmp_path / "r.json"
    args = ["--index", str(tmp_path / "ivf"), "--query", query.path, "--topk", "100",
            "--json", str(out)]
    res = search_cmd.main(args)
    warned = _warnings(capsys.readouterr().err)
    record = json.loads(out.read_text())["short_of_topk"]
    lengths = [len(r["matches"]) for r in res["results"]]
    assert min(lengths) < 100 and record["short_queries"]  # one cell of 16 holds fewer
    assert record["short_queries"] == [i for i, n in enumerate(lengths) if n < 100]
    assert record["returned_min"] == min(lengths) and record["filled_from_exact"] == []
    assert len(warned) == 1 and "the index search returned fewer than 100 for" in warned[0]
    assert "--fill-exact" in warned[0]
    # --fill-exact: the short queries get the exact search's rows
    res = search_cmd.main([*args, "--fill-exact"])
    warned = _warnings(capsys.readouterr().err)
    record = json.loads(out.read_text())["short_of_topk"]
    assert all(len(r["matches"]) == 100 for r in res["results"])
    assert record["short_queries"] == [] and record["filled_from_exact"]
    assert len(warned) == 1 and "completed from the exact search" in warned[0]
    exact = search_cmd.main(["--gallery", gallery.path, "--query", query.path, "--topk", "100"])
    capsys.readouterr()
    for qi in record["filled_from_exact"]:
        assert [m["index"] for m in res["results"][qi]["matches"]] == \
            [m["index"] for m in exact["results"][qi]["matches"]]
