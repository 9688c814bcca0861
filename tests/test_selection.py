"""Token-selection evidence (issue 12): the recall/precision metric, the engine hook, the heat
maps, ``tools/visualize.py tokens`` and the smoke mode of ``benchmarks/selection_study.py``."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import TINY_OPTS, load_benchmark, tiny_cfg

import torchreid_sdtps  # noqa: F401  (registers the data set, model and engine)
from torchreid_sdtps import build, compat
from torchreid_sdtps.cli.visualize import main as visualize_main
from torchreid_sdtps.errors import ConfigError
from torchreid_sdtps.metrics.selection import (
    cue_mask,
    evaluate_selection,
    selection_counts,
    selection_scores,
)
from torchreid_sdtps.viz import token_maps
from torchreid_sdtps.viz.token_maps import CUE_COLOUR, KEPT_COLOUR, panel_origin, token_map

torch.set_num_threads(1)

# localized cue on a 4x2 patch grid (64x32 images): conftest's tiny set with these overrides
LOCALIZED = ("synthetic.cue", "localized", "synthetic.clutter", "6")
TINY = [*TINY_OPTS, *LOCALIZED]


def _cfg(root, save_dir, *opts):
    return tiny_cfg(root, save_dir, *LOCALIZED, *opts)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("selection_data")


# ----------------------------------------------------------------------------- metric
def test_hand_built_masks_give_the_expected_recall_and_precision():
    # B=2 samples, M=2 modalities, N=6 patches
    kept = torch.tensor([[[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]],
                         [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]]], dtype=torch.bool)
    cue = torch.tensor([[[1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
                        [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]]], dtype=torch.bool)
    res = selection_scores(kept, cue)
    # modality 0: sample 0 keeps 1 of 2 cue patches (1 of 3 kept is cue), sample 1 both (2 of 2)
    assert res["recall"][0] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert res["precision"][0] == pytest.approx((1 / 3 + 2 / 2) / 2)
    # modality 1: sample 0 keeps none of its cue, sample 1 one of two (1 of 2 kept)
    assert res["recall"][1] == pytest.approx((0 + 1 / 2) / 2)
    assert res["precision"][1] == pytest.approx((0 + 1 / 2) / 2)
    # a soft (straight-through) float mask is read by value; shapes are checked
    assert selection_counts(kept.float().requires_grad_(), cue)["n"] == 2
    with pytest.raises(ValueError, match=r"\(B, M, N\)"):
        selection_scores(kept[0], cue[0])
    with pytest.raises(ValueError, match="no cue patch"):
        selection_scores(kept, torch.zeros_like(cue))


def test_cue_mask_from_the_dataset_protocol():
    class Truth:
        cue_grid = (2, 2)

        def cue_patches(self, paths):
            return {"a": [[0, 1], [2, 3]], "b": [[3, 2], [0, 0]]}[paths[0]]

    mask = cue_mask(Truth(), [("a",), ("b",)], 4)
    assert mask.tolist() == [[[True, True, False, False], [False, False, True, True]],
                             [[False, False, True, True], [True, False, False, False]]]
    with pytest.raises(ValueError, match="out of range"):
        cue_mask(Truth(), [("a",)], 3)


# ----------------------------------------------------------------------------- heat maps
def test_picture_has_the_expected_size_and_marks_exactly_the_kept_patches():
    rng = np.random.default_rng(0)
    m, h, w, grid, scale = 3, 64, 32, (4, 2), 3
    images = rng.integers(0, 256, (m, h, w, 3), dtype=np.uint8)
    scores = rng.random((m, 8)).astype(np.float32)
    kept = np.zeros((m, 8), bool)
    for i in range(m):
        kept[i, np.argsort(-scores[i])[:4]] = True
    cue = np.zeros((m, 8), bool)
    cue[:, [2, 3]] = True
    pic = np.asarray(token_map(images, scores, kept, grid, cue, ["RGB", "NI", "TI"], scale))
    assert pic.shape == (16 + 2 * h * scale + 6 + 14 + 3, m * (w * scale + 6) + 6, 3)
    ph, pw = h // grid[0] * scale, w // grid[1] * scale
    for i in range(m):
        for row in (0, 1):                                     # image row, score row
            x0, y0 = panel_origin(i, row, (h, w), scale)
            for j in range(8):
                r, c = divmod(j, grid[1])
                left, top = x0 + c * pw, y0 + r * ph
                edge = tuple(pic[top + 1, left + pw // 2])     # on the outline of patch j
                assert (edge == KEPT_COLOUR) == kept[i, j], (i, row, j, edge)
                inner = tuple(pic[top + 4, left + pw // 2])    # on the cue outline
                assert (inner == CUE_COLOUR) == cue[i, j], (i, row, j, inner)
    with pytest.raises(ValueError, match=r"\(M, N\)"):
        token_map(images, scores[:, :7], kept, grid)


# ----------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def built(data_root, tmp_path_factory):
    cfg = _cfg(data_root, tmp_path_factory.mktemp("log"))
    dm, model, _, _, engine = build.build_all(cfg)
    return cfg, dm, model, engine


def test_engine_logs_selection_at_evaluation_and_it_matches_extract(built, caplog):
    _, dm, model, engine = built
    with caplog.at_level("INFO", logger="torchreid_sdtps.engine.sdtps_engine"):
        res = engine.evaluate()
    sel = res["selection"]
    assert "selection recall/precision" in caplog.text
    query = dm.test_loader["synthetic_msreid"]["query"]
    assert sel["num_samples"] == len(query.dataset) and sel["keep_ratio"] == pytest.approx(0.5)
    assert sel["cue_fraction"] == pytest.approx(2 / 8)
    # the same numbers from model.extract() masks and the dataset's cue cells, by hand
    model.eval()
    ds = query.dataset
    kept, cues = [], []
    for data in query:
        with torch.no_grad():
            kept.append(model.extract(data["img"], data["cam_label"])["masks"].bool())
        cues.append(torch.stack([cue_mask(ds, [p], 8)[0] for p in zip(*data["impath"])]))
    ref = selection_scores(torch.cat(kept), torch.cat(cues))
    assert list(sel["recall"].values()) == pytest.approx(ref["recall"])
    assert list(sel["precision"].values()) == pytest.approx(ref["precision"])


def test_no_ground_truth_or_no_selection_measures_nothing(built, tmp_path):
    cfg, dm, model, _ = built
    loader = dm.test_loader["synthetic_msreid"]["query"]
    spread = _cfg(tmp_path, tmp_path / "log", "synthetic.cue", "spread")
    dm_spread = build.build_datamanager(spread)
    assert evaluate_selection(model, dm_spread.test_loader["synthetic_msreid"]["query"]) is None
    plain = compat.model_factory()[cfg.model.name](
        num_classes=dm.num_train_pids, pretrained=False, img_size=(64, 32), use_sdtps=False,
        test_feature="ori")
    assert evaluate_selection(plain, loader) is None   # no token selection: no masks


def test_token_maps_of_a_model_and_the_cli(built, data_root, tmp_path, capsys):
    cfg, dm, model, _ = built
    ds = dm.test_loader["synthetic_msreid"]["query"].dataset
    picture, info = token_maps.sample_token_map(model, ds, 3, scale=2)
    assert picture.size == (3 * (32 * 2 + 6) + 6, 16 + 2 * 64 * 2 + 6 + 14 + 3)
    assert set(info["recall"]) == {"RGB", "NI", "TI"}
    paths = visualize_main(["tokens", "--untrained", "--num", "2", "--scale", "2",
                            "--out", str(tmp_path / "maps"), *TINY,
                            "data.root", str(data_root), "data.save_dir", str(tmp_path / "log")])
    assert len(paths) == 2 and all(p.endswith(".png") and os.path.isfile(p) for p in paths)
    assert sorted(os.listdir(tmp_path / "maps")) == sorted(os.path.basename(p) for p in paths)
    with pytest.raises(FileNotFoundError, match="--weights"):
        visualize_main(["tokens", *TINY, "data.root", str(data_root),
                        "data.save_dir", str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="--num and --scale must be >= 1"):
        visualize_main(["tokens", "--num", "0"])


# ----------------------------------------------------------------------------- the study
def test_selection_study_smoke(tmp_path, capsys):
    study = load_benchmark("selection_study")
    runs_file = tmp_path / "runs.jsonl"
    out = tmp_path / "RESULTS.md"
    argv = ["--smoke", "--settings", "sdtps_topk,no_sdtps", "--root", str(tmp_path / "data"),
            "--runs-file", str(runs_file), "--out", str(out), "--threads", "1"]
    r = study.main(argv)
    rows = {s["setting"]: s for s in r["summary"].values() if s["trained"]}
    # chance recall is the keep ratio K/N: rho = 0.5 of an even patch count, exactly 50 %
    assert rows["sdtps_topk"]["chance_recall"] == pytest.approx(50.0, abs=1e-9)
    # the row is the runs' measured recall (percent), and only SDTPS selects
    measured = [100 * res["recall"] for run in r["runs"] if run["setting"] == "sdtps_topk"
                and run["trained"] for res in run["results"].values() if "recall" in res]
    assert measured and rows["sdtps_topk"]["recall"] == pytest.approx(sum(measured) / len(measured))
    assert "recall" not in rows["no_sdtps"]
    assert study.BEGIN in out.read_text() and "selection recall" in out.read_text()
    # resumable: a second invocation reuses the 3 finished runs and trains nothing
    again = study.main(argv)
    assert "resuming: 3 finished runs" in capsys.readouterr().out
    assert [x["results"] for x in again["runs"]] == [x["results"] for x in r["runs"]]


def test_token_map_splits_a_side_by_side_sample(tmp_path):
    """RGBNT100 stores RGB|NI|TI in one file: the picture shows the three parts, one per panel."""
    from _trees import make_rgbnt100_tree

    from torchreid_sdtps.data.rgbnt100 import RGBNT100
    from torchreid_sdtps.models.net import sdtps_vit_tiny

    root = make_rgbnt100_tree(tmp_path, size=(64, 32))
    _, test_tf = compat.build_transforms(64, 32, transforms=None, norm_mean=[0.5] * 3,
                                         norm_std=[0.5] * 3)
    ds = RGBNT100(root=root, transform=test_tf, mode="query", verbose=False)
    torch.manual_seed(0)
    model = sdtps_vit_tiny(num_classes=4, img_size=(64, 32), pretrained=False)
    picture, info = token_maps.sample_token_map(model, ds, 0, scale=2)
    assert len(info["paths"]) == 1 and info["recall"] is None  # one file, no cue ground truth
    assert picture.size[0] == 3 * (32 * 2 + 6) + 6  # three modality panels, as for 3 files
