"""tools/train.py and tools/test.py: the shortened demo through the real CLI, checkpoint ->
test reproduction, the missing-modality table, resume equality and name/config errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _rank import reference_map
from conftest import TINY_OPTS, tiny_cfg

from torchreid_sdtps import build, cli, compat
from torchreid_sdtps.cli import test as test_cmd
from torchreid_sdtps.cli import train as train_cmd

REPO = Path(__file__).resolve().parents[1]

def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)


def _row(text: str, label: str) -> list[float]:
    line = next(ln for ln in text.splitlines() if label in ln)
    return [float(v) for v in re.findall(r"(\d+\.\d)%", line)]


def test_demo_cli_table_checkpoint_and_test_reproduces(synthetic_root, tmp_path):
    save = tmp_path / "demo"
    common = ["data.root", str(synthetic_root), "data.save_dir", str(save), *TINY_OPTS]
    proc = _run("train.py", *common, "train.max_epoch", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # one table: header, untrained row, trained row, then the checkpoint path
    header = next(ln for ln in out.splitlines() if ln.startswith("model "))
    assert header.split() == ["model", "mAP", "R1", "R5", "R10"]
    untrained, trained = _row(out, "untrained (random init)"), _row(out, "trained (2 epochs)")
    assert len(untrained) == len(trained) == 4
    assert out.index("untrained (random init)") < out.index("trained (2 epochs)") < \
        out.index("checkpoint: ")
    ckpt = Path(re.search(r"checkpoint: (\S+)", out).group(1))
    assert ckpt == save / "model" / "model.pth.tar-2" and ckpt.is_file()
    summary = json.loads((save / "results.json").read_text())
    res = summary["trained"]["synthetic_msreid"]
    assert [round(100 * res[k], 1) for k in ("mAP", "R1", "R5", "R10")] == trained
    assert summary["checkpoint"] == str(ckpt)
    # text log and tensorboard scalars in save_dir
    (log,) = save.glob("train.log-*")
    assert "trained (2 epochs)" in log.read_text()
    assert list(save.glob("events.out.tfevents.*"))

    # tools/test.py on the checkpoint reproduces the final metrics; --missing adds the table
    proc = _run("test.py", *common, "--weights", str(ckpt), "--missing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = json.loads((save / "test_results.json").read_text())
    again = tested["results"]["synthetic_msreid"]
    for key in ("mAP", "R1", "R5", "R10"):
        assert again[key] == pytest.approx(res[key], abs=1e-6), key
    table = proc.stdout[proc.stdout.index("Missing modalities"):]
    for setting in ("none", "RGB", "NI", "TI", "RGB+NI", "RGB+TI", "NI+TI"):
        assert re.search(rf"^{re.escape(setting)}\s+\d+\.\d%", table, re.M), setting
    assert set(tested["missing"]["synthetic_msreid"]) == {
        "none", "RGB", "NI", "TI", "RGB+NI", "RGB+TI", "NI+TI"}
    assert tested["missing"]["synthetic_msreid"]["none"]["mAP"] == pytest.approx(res["mAP"])


def _train(root, save, *extra):
    return train_cmd.main(["data.root", str(root), "data.save_dir", str(save), *TINY_OPTS,
                           "test.compare_untrained", "False", "sdtps.selection", "gumbel", *extra])


def test_resume_matches_the_uninterrupted_run(synthetic_root, tmp_path):
    straight = _train(synthetic_root, tmp_path / "straight", "train.max_epoch", "2")
    first = _train(synthetic_root, tmp_path / "first", "train.max_epoch", "1")
    resumed = _train(synthetic_root, tmp_path / "resumed", "train.max_epoch", "2",
                     "model.resume", first["checkpoint"])
    assert resumed["start_epoch"] == 1
    a = straight["trained"]["synthetic_msreid"]
    b = resumed["trained"]["synthetic_msreid"]
    for key in ("mAP", "R1", "R5", "R10"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    wa = torch.load(straight["checkpoint"], map_location="cpu", weights_only=True)
    wb = torch.load(resumed["checkpoint"], map_location="cpu", weights_only=True)
    for name, tensor in wa["state_dict"].items():
        assert torch.allclose(tensor.float(), wb["state_dict"][name].float(), atol=1e-6), name
    assert wa["optimizer"]["param_groups"][0]["lr"] == wb["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.parametrize("override, expected", [
    (["data.sources", "['nope']"], r"unknown dataset 'nope'.*registered datasets: .*'rgbnt201'"
                                   r".*'synthetic_msreid'"),
    (["model.name", "nope"], r"unknown model 'nope'.*registered models: .*'sdtps_vit_tiny'"),
    (["sdtps.engine", "nope"], r"unknown engine 'nope'.*registered engines: .*'sdtps'.*"
                               r"'softmax'.*'triplet'"),
    (["model.hdm", "True"], r"SDTPS replaces HDM/ATM"),
    (["train.lrr", "1"], r"unknown config key 'train.lrr'"),
])
def test_bad_names_and_keys_exit_2_with_the_choices(capsys, tmp_path, override, expected):
    code = cli.run("train", ["data.save_dir", str(tmp_path), *override])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("torchreid-sdtps-train: error: ") and re.search(expected, err), err
    assert err.count("\n") == 1  # one line
    assert not list(tmp_path.glob("train.log-*"))  # refused before training: no log left


def test_test_tool_without_checkpoint_and_unknown_option(capsys, tmp_path):
    assert cli.run("test", ["data.save_dir", str(tmp_path / "empty")]) == 2
    assert "holds no model.pth.tar" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.run("train", ["--bogus", "1"])
    assert exc.value.code == 2
    assert "unrecognized option '--bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["triplet", "softmax"])
def test_stock_engine_checkpoints_resume_and_load(synthetic_root, tmp_path, engine):
    """torchreid's own engines save ``rank1`` as a NumPy float, which torch>=2.6's safe
    loader refuses; resuming from and testing their checkpoints must still work."""
    loss = ["loss.name", "softmax"] if engine == "softmax" else []
    first = _train(synthetic_root, tmp_path / "first", "train.max_epoch", "1",
                   "sdtps.engine", engine, *loss)
    allowed = torch.serialization.get_safe_globals()  # the plugin's process-wide allow-list
    torch.serialization.clear_safe_globals()
    try:  # without it torch's safe loader refuses torchreid's NumPy rank1
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(first["checkpoint"], map_location="cpu", weights_only=True)
    finally:
        torch.serialization.add_safe_globals(allowed)
    resumed = _train(synthetic_root, tmp_path / "resumed", "train.max_epoch", "2",
                     "sdtps.engine", engine, *loss, "model.resume", first["checkpoint"])
    assert resumed["start_epoch"] == 1
    tested = test_cmd.main(["data.root", str(synthetic_root), "data.save_dir",
                            str(tmp_path / "tested"), *TINY_OPTS, "sdtps.engine", engine, *loss,
                            "model.load_weights", resumed["checkpoint"]])
    # the numbers of an independent ranking of the checkpoint's weights (torchreid's stock
    # engines show the model images only, no camera ids): a checkpoint loaded wrongly, or not
    # at all, ranks differently
    cfg = tiny_cfg(synthetic_root, tmp_path / "ref", "sdtps.engine", engine, *loss)
    dm = build.build_datamanager(cfg)
    model = build.build_model(cfg, dm)
    compat.utils().load_pretrained_weights(model, resumed["checkpoint"])
    model.eval()
    split = {}
    for name in ("query", "gallery"):
        feats, pids, cams = [], [], []
        for data in dm.test_loader["synthetic_msreid"][name]:
            with torch.no_grad():
                feats.append(model(data["img"]))
            pids += data["pid"].tolist()
            cams += data["camid"].tolist()
        split[name] = (torch.cat(feats).numpy(), np.array(pids), np.array(cams))
    (qf, qp, qc), (gf, gp, gc) = split["query"], split["gallery"]
    mean_ap, r1 = reference_map(qf, gf, qp, gp, qc, gc, normalize=False)
    assert tested["results"]["synthetic_msreid"]["mAP"] == pytest.approx(mean_ap, abs=1e-6)
    assert tested["results"]["synthetic_msreid"]["R1"] == pytest.approx(r1, abs=1e-6)


def test_console_scripts_name_themselves(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["torchreid-sdtps-train", "data.save_dir", str(tmp_path),
                                      "model.name", "nope"])
    assert train_cmd.console() == 2
    assert capsys.readouterr().err.startswith("torchreid-sdtps-train: error: unknown model 'nope'")
    monkeypatch.setattr(sys, "argv", ["torchreid-sdtps-test", "data.save_dir", str(tmp_path)])
    assert test_cmd.console() == 2
    assert "torchreid-sdtps-test: error: nothing to evaluate" in capsys.readouterr().err
    for name in cli.COMMANDS:  # --help names the console script
        with pytest.raises(SystemExit) as exc:
            cli.run(name, ["--help"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: torchreid-sdtps-{name} ")


def test_overrides_are_trailing_pairs_with_opts_as_alias(tmp_path):
    from torchreid_sdtps.cli import runner

    cmd = runner.get_command("extract")
    args = runner.parse(cmd, ["model.name", "x", "--weights", "w", "--dataset", "d", "-o", "o",
                              "test.batch_size", "4", "--opts", "data.width", "32"])
    assert args.opts == ["model.name", "x", "test.batch_size", "4", "data.width", "32"]
    with pytest.raises(SystemExit):  # an odd count is a usage error
        runner.parse(cmd, ["--weights", "w", "--dataset", "d", "-o", "o", "model.name"])


def test_unknown_names_are_readable_key_errors():
    from torchreid_sdtps import plugins
    from torchreid_sdtps.errors import SDTPSError, UnknownNameError

    for lookup in (plugins.get_engine, plugins.get_loss):
        with pytest.raises(KeyError) as exc:
            lookup("nope")
        assert isinstance(exc.value, UnknownNameError) and isinstance(exc.value, SDTPSError)
        assert str(exc.value).startswith("unknown ") and "'nope'; registered" in str(exc.value)
