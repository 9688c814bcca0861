"""The commands one step off the happy path, run as a user runs them (tools/*.py in a fresh
process: exit status, stderr, the files on disk before and after): checkpoints that do not fit
or are truncated, overrides that change the model, feature files made differently, SIE
searches without a camera, finished runs resumed, stale partial files and whole-run timings."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _deploy import tiny_checkpoint
from conftest import TINY_OPTS

from torchreid_sdtps import cli, compat
from torchreid_sdtps.cli.extract import main as main_extract
from torchreid_sdtps.deploy.features import save_features
from torchreid_sdtps.deploy.provenance import COMPARED, file_digest
from torchreid_sdtps.deploy.store import load_features

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)


def _one_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The whole stderr must be one line ``<prog>: error: ...`` (no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()
             and "Cython evaluation" not in ln and "warnings.warn(" not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SIE checkpoint (sdtps_vit_tiny, 2 cameras), a torchreid osnet_x0_25 checkpoint,
    a truncated copy, and the gallery feature file of the tiny one."""
    root = tmp_path_factory.mktemp("edges")
    _, dm, _, ckpt = tiny_checkpoint(root, root / "log")
    osnet = compat.models().build_model("osnet_x0_25", num_classes=6, pretrained=False)
    osnet_ckpt = root / "osnet_x0_25.pth.tar"
    torch.save({"state_dict": osnet.state_dict(), "epoch": 1, "rank1": 0.0}, osnet_ckpt)
    truncated = root / "truncated.pth.tar"
    data = Path(ckpt).read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    gallery = str(root / "gallery.pt")
    main_extract(["--weights", ckpt, "--dataset", "synthetic_msreid", "--split", "gallery",
                  "--root", str(root), "-o", gallery])
    return {"root": root, "ckpt": ckpt, "osnet": str(osnet_ckpt), "truncated": str(truncated),
            "gallery": gallery}


def _test_args(tiny, save: Path, weights: str, *extra: str) -> list[str]:
    return ["data.root", str(tiny["root"]), "data.save_dir", str(save), *TINY_OPTS,
            "--weights", weights, *extra]


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("case", ["other_model", "torchreid_osnet", "truncated"])
def test_test_refuses_checkpoints_that_do_not_fit(tiny, tmp_path, case):
    save = tmp_path / "save"
    save.mkdir()
    earlier = save / "test_results.json"
    earlier.write_text('{"earlier": "results"}')
    if case == "other_model":  # the demo checkpoint on another architecture
        proc = _tool("test", *_test_args(tiny, save, tiny["ckpt"], "model.name", "sdtps_vit_b16",
                                         "model.pretrained", "False"))
        expected = [f"checkpoint '{tiny['ckpt']}' does not fit model sdtps_vit_b16",
                    "missing", "mismatched", "the checkpoint holds sdtps_vit_tiny"]
    elif case == "torchreid_osnet":
        proc = _tool("test", *_test_args(tiny, save, tiny["osnet"]))
        expected = [f"checkpoint '{tiny['osnet']}' does not fit model sdtps_vit_tiny",
                    "unexpected", "conv1.conv.weight"]
    else:
        proc = _tool("test", *_test_args(tiny, save, tiny["truncated"]))
        expected = [f"cannot read checkpoint '{tiny['truncated']}': truncated or corrupt"]
        assert "Configuration" not in proc.stdout  # refused before the run starts
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc, "torchreid-sdtps-test")
    for text in expected:
        assert text in line, line
    assert earlier.read_text() == '{"earlier": "results"}'  # not overwritten
    assert sorted(p.name for p in save.iterdir()) == ["test_results.json"]  # no log left


def test_extract_with_a_model_override_that_does_not_fit(tiny, tmp_path):
    out = tmp_path / "q.pt"
    proc = _tool("extract", "--weights", tiny["ckpt"], "--dataset", "synthetic_msreid",
                 "--root", str(tiny["root"]), "-o", str(out), "--opts", "model.name",
                 "sdtps_vit_b16")
    assert proc.returncode == 2
    line = _one_error_line(proc, "torchreid-sdtps-extract")
    assert "does not fit model sdtps_vit_b16" in line and "holds sdtps_vit_tiny" in line
    assert not out.exists() and not list(tmp_path.iterdir())
    # the positional form is the same override
    assert cli.run("extract", ["--weights", tiny["ckpt"], "--dataset", "synthetic_msreid",
                               "--root", str(tiny["root"]), "-o", str(out), "model.name",
                               "sdtps_vit_b16"]) == 2
    assert not out.exists()


# ----------------------------------------------------------------------------- provenance

def test_feature_files_record_their_provenance(tiny):
    rec = load_features(tiny["gallery"]).info["provenance"]
    assert {k: rec[k] for k in COMPARED} == {
        "model": "sdtps_vit_tiny", "checkpoint_sha256": file_digest(tiny["ckpt"]),
        "normalized": False, "camera_term": "used", "input_size": [64, 32],
        "modalities": ["RGB", "NI", "TI"], "feature_dim": rec["feature_dim"],
        "test_feature": "concat"}
    assert rec["checkpoint"] == os.path.abspath(tiny["ckpt"]) and rec["feature_dim"] > 0


def test_sie_image_search_needs_the_camera_and_shows_it(tiny, capsys):
    gallery = load_features(tiny["gallery"])
    images = list(gallery.paths[5])
    cam = gallery.cam_labels[5]
    args = ["--gallery", tiny["gallery"], "--images", *images, "--weights", tiny["ckpt"]]
    assert cli.run("search", args) == 2
    err = capsys.readouterr().err
    assert "SIE camera embedding" in err and "pass --cam ID" in err and "(0..1" in err
    res = cli.main("search", [*args, "--cam", str(cam), "--topk", "2"])["results"][0]
    out = capsys.readouterr().out
    # the table writes cameras 1-based, as the file names do (cam1 = camid 0); the JSON 0-based
    assert re.search(rf"^query 0: .*_cam{cam + 1}_.* cam {cam + 1}\)$", out, re.M), out
    assert res["query"]["camid"] == cam
    first = res["matches"][0]
    assert first["index"] == 5 and first["distance"] < 1e-3  # the image finds itself
    row = next(ln for ln in out.splitlines() if re.match(r"^\s+1\s", ln))
    assert row.split()[3] == str(first["camid"] + 1) and f"_cam{first['camid'] + 1}_" in row


def test_search_refuses_query_and_gallery_made_differently(tiny, tmp_path, capsys):
    query = str(tmp_path / "q_norm.pt")
    main_extract(["--weights", tiny["ckpt"], "--dataset", "synthetic_msreid", "--root",
                  str(tiny["root"]), "--normalize", "-o", query])
    args = ["--gallery", tiny["gallery"], "--query", query, "--json", str(tmp_path / "r.json")]
    assert cli.run("search", args) == 2
    err = capsys.readouterr().err
    assert "made differently (normalized: " in err and "True vs" in err and "--allow-mismatch" in err
    assert not (tmp_path / "r.json").exists()
    assert cli.run("search", [*args, "--allow-mismatch"]) == 0
    assert "warning: " in capsys.readouterr().err and (tmp_path / "r.json").exists()


def test_old_feature_files_without_provenance_still_load(tiny, tmp_path, capsys):
    old = load_features(tiny["gallery"])
    old.info.pop("provenance")
    path = save_features(old, str(tmp_path / "old.pt"))
    assert cli.run("search", ["--gallery", path, "--query", path, "--topk", "1"]) == 0
    err = capsys.readouterr().err
    assert "provenance unknown" in err and err.count("warning: ") == 2


# ----------------------------------------------------------------------------- train

def test_a_finished_run_resumed_completes(synthetic_root, tmp_path):
    save = tmp_path / "run"
    common = ["data.root", str(synthetic_root), "data.save_dir", str(save), *TINY_OPTS,
              "test.compare_untrained", "False", "train.max_epoch", "1", "train.auto_resume",
              "True"]
    first = cli.main("train", common)
    assert first["attempts"] == 1 and not first["finished_before"]
    model_dir = save / "model"
    stale = model_dir / ".model.pth.tar-2.k3j4h5g6.partial"  # a killed checkpoint write
    stale.write_bytes(b"\0" * 100)
    foreign = [model_dir / ".notes.k3j4h5g6.partial", save / "mine.partial"]
    for path in foreign:
        path.write_text("not ours")
    proc = _tool("train", *common)  # the same command again (or torchrun's restart)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained (1 epochs)" in proc.stdout and "in 2 attempts, the last" in proc.stdout
    summary = json.loads((save / "results.json").read_text())
    assert summary["finished_before"] and summary["attempts"] == 2
    assert summary["checkpoint"] == first["checkpoint"]
    for key in ("mAP", "R1", "R5", "R10"):
        assert summary["trained"]["synthetic_msreid"][key] == pytest.approx(
            first["trained"]["synthetic_msreid"][key], abs=1e-6)
    assert summary["wall_s"] >= first["wall_s"] + summary["wall_s_last_attempt"] - 0.2
    assert not stale.exists() and all(p.exists() for p in foreign)
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == \
        ["model.pth.tar-1"]


def test_run_clock_counts_a_killed_attempt_up_to_its_last_sign_of_life(tmp_path):
    import time

    from torchreid_sdtps.checkpoint import Checkpointer
    from torchreid_sdtps.cli.runclock import RunClock

    RUN_STATE = Checkpointer.RUN_STATE

    t0 = time.time() - 100
    log = tmp_path / "train.log-killed"
    log.write_text("epoch 1 ...")
    os.utime(log, (t0 + 60, t0 + 60))  # its last write, 60 s after it started
    (tmp_path / RUN_STATE).write_text(json.dumps(
        {"attempts": [{"started": t0, "ended": None, "log": str(log)}]}))
    clock = RunClock(str(tmp_path), resumed=True)
    timing = clock.finish()
    assert timing["attempts"] == 2 and 60 <= timing["wall_s"] < 61
    assert clock.describe().endswith("s in 2 attempts, the last 0 s")
    state = json.loads((tmp_path / RUN_STATE).read_text())["attempts"]
    assert state[0]["killed"] and state[0]["ended"] == pytest.approx(t0 + 60)
    assert RunClock(str(tmp_path), resumed=False).finish()["attempts"] == 1  # a fresh run
