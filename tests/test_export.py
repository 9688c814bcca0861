"""ONNX export: dynamic batch, camera ids as a second input, the meta in the file, and parity
with PyTorch on the checkpoint's own data set (feature difference relative to the feature norm
<= PARITY_RTOL, mAP/R1 within PARITY_MAP_TOL, the same ranking up to float32 near-ties)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from _deploy import tiny_checkpoint  # noqa: E402

from torchreid_sdtps.cli import run  # noqa: E402
from torchreid_sdtps.cli.export import main as main_export  # noqa: E402
from torchreid_sdtps.deploy import FeatureExtractor  # noqa: E402
from torchreid_sdtps.deploy.onnx import (  # noqa: E402
    PARITY_MAP_TOL,
    PARITY_RTOL,
    OrtForward,
    check_parity,
    export_onnx,
    read_onnx_meta,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny SIE checkpoint exported through tools/export.py's main (with its parity check)."""
    root = tmp_path_factory.mktemp("export")
    cfg, _, _, ckpt = tiny_checkpoint(root, root / "log")
    onnx_path = str(root / "tiny.onnx")
    summary = main_export(["--weights", ckpt, "-o", onnx_path])
    return {"root": root, "ckpt": ckpt, "onnx": onnx_path, "summary": summary,
            "fx": FeatureExtractor(ckpt, device="cpu")}


def test_export_tool_reports_parity(exported):
    parity = exported["summary"]["parity"]
    assert parity["ok"]  # not bit-equal: relative tolerances (another CPU, another ORT build)
    assert parity["rel_diff"] <= PARITY_RTOL == parity["rtol"]
    assert parity["split_rel_diff"] <= PARITY_RTOL and parity["dist_rel_diff"] < 1e-3
    assert parity["rel_diff"] == pytest.approx(parity["max_abs_diff"] / parity["max_feature_norm"])
    assert parity["min_cosine"] > 1 - 1e-6
    assert parity["metric_tol"] == max(PARITY_MAP_TOL, 1 / 24)  # one query's worth
    for key in ("mAP", "R1"):
        assert abs(parity["torch"][key] - parity["onnxruntime"][key]) <= parity["metric_tol"]
    assert parity["num_query"] == 24 and parity["batch"] == 24
    # the checkpoint's own data set, where it already was: nothing generated elsewhere
    assert parity["data"] == {"dataset": "synthetic_msreid", "root": str(exported["root"]),
                              "fallback": ""}
    assert exported["summary"]["parity_report"] == exported["onnx"] + ".parity.json"
    with open(exported["onnx"] + ".parity.json", encoding="utf-8") as fh:
        assert json.load(fh) == parity


def test_onnx_has_dynamic_batch_camera_input_and_meta(exported):
    ort = OrtForward(exported["onnx"])
    inputs = {i.name: i for i in ort.session.get_inputs()}
    assert list(inputs) == ["images", "cam_label"]
    assert inputs["images"].shape[1:] == [3, 3, 64, 32] and isinstance(inputs["images"].shape[0], str)
    assert inputs["cam_label"].type == "tensor(int64)"
    meta = read_onnx_meta(exported["onnx"])
    assert meta["model_name"] == "sdtps_vit_tiny" and meta["height"] == 64
    fx = exported["fx"]
    x = torch.randn(5, 3, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    for b in (1, 5):  # other batch sizes than the export's 2
        cams = torch.arange(b) % 2
        ref = fx.forward(x[:b], cams)
        diff = (ort(x[:b], cams) - ref).abs().max()
        assert diff <= PARITY_RTOL * ref.norm(dim=1).max()
    # the camera term is really in the graph: other cameras, other features
    assert (ort(x, torch.zeros(5, dtype=torch.long)) - ort(x, torch.ones(5, dtype=torch.long))
            ).abs().max() > 1e-3
    with pytest.raises(ValueError, match="takes camera ids"):
        ort(x)


def test_export_without_cameras_matches_torch_without_them(exported, tmp_path):
    fx = exported["fx"]
    path = export_onnx(fx.model, str(tmp_path / "nocam.onnx"), fx.meta, cameras=False)
    ort = OrtForward(path)
    assert [i.name for i in ort.session.get_inputs()] == ["images"]
    parity = check_parity(fx, path, str(exported["root"]))
    assert parity["ok"] and parity["split_rel_diff"] <= PARITY_RTOL
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*"))


def test_export_errors(exported, tmp_path, capsys):
    assert run("export", ["--weights", str(tmp_path / "none.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OrtForward(str(tmp_path / "missing.onnx"))

def test_parity_check_catches_a_diverging_model(exported):
    """The check fails when the ONNX file does not compute what the PyTorch model computes."""
    other = FeatureExtractor(exported["ckpt"], device="cpu")
    with torch.no_grad():
        other.model.neck_ori.bn.weight.mul_(1.5)
    parity = check_parity(other, exported["onnx"], str(exported["root"]))
    assert not parity["ok"] and parity["rel_diff"] > 1e-3


def test_parity_on_the_checkpoints_own_real_layout_data(tmp_path):
    """A checkpoint trained on RGBNT201 is checked on RGBNT201 (nothing written into its data
    root); without that data, on a small synthetic set in a temporary folder, saying so."""
    from pathlib import Path

    from _trees import make_rgbnt201_tree

    root = make_rgbnt201_tree(tmp_path / "data", num_ids=4, cams=2, per_cam=2, size=(64, 32))
    _, _, _, ckpt = tiny_checkpoint(root, tmp_path / "log", "data.sources", "['rgbnt201']",
                                    "data.targets", "['rgbnt201']")
    before = sorted(Path(root).rglob("*"))
    out = tmp_path / "r201.onnx"
    parity = main_export(["--weights", ckpt, "-o", str(out)])["parity"]
    assert parity["data"] == {"dataset": "rgbnt201", "root": root, "fallback": ""}
    assert parity["ok"] and parity["num_query"] == 16 and out.is_file()
    assert sorted(Path(root).rglob("*")) == before
    moved = tmp_path / "moved"
    moved.mkdir()
    fallback = check_parity(FeatureExtractor(ckpt, device="cpu"), str(out), str(moved))
    assert fallback["ok"] and fallback["data"]["dataset"] == "synthetic_msreid"
    assert fallback["data"]["fallback"].startswith(f"rgbnt201 not found under '{moved}'")
    assert fallback["data"]["generated_in_temporary_folder"] and not list(moved.iterdir())


def test_a_failed_parity_check_exits_1_and_writes_no_onnx(exported, tmp_path, capsys,
                                                          monkeypatch):
    from torchreid_sdtps.deploy import onnx as deploy_onnx

    real = deploy_onnx.check_parity
    monkeypatch.setattr(deploy_onnx, "check_parity",
                        lambda *a, **k: dict(real(*a, **k), ok=False))
    out = tmp_path / "bad.onnx"
    assert run("export", ["--weights", exported["ckpt"], "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torchreid-sdtps-export: error: ONNX Runtime differs from PyTorch")
    assert not out.exists() and (tmp_path / "bad.onnx.parity.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx.parity.json"]


def test_inference_benchmark_smoke(tmp_path):
    """benchmarks/bench_inference.py --smoke: both backends timed, same features, report."""
    import importlib.util
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    spec = importlib.util.spec_from_file_location("bench_inference",
                                                  bench_dir / "bench_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nkept\n")
    r = bench.main(["--smoke", "--threads", "1", "--out", str(out)])
    (res,) = r["results"]
    assert [row["batch"] for row in res["rows"]] == [1, 2]
    for row in res["rows"]:
        assert row["eager_ms"] > 0 and row["onnx_ms"] > 0 and row["max_abs_diff"] <= 1e-3
        assert row["speedup"] == pytest.approx(row["onnx_sps"] / row["eager_sps"])
    text = out.read_text()
    assert "kept" in text and bench.BEGIN in text and "| sdtps_vit_tiny | 64x32 | 2 (6) |" in text
