"""Interrupts and refusals as a user meets them (tools/*.py in a fresh process): Ctrl-C
(SIGINT) or SIGTERM ends a command with one line and exit 130 / 143, no traceback, nothing
partial; an interrupted training run resumes with ``train.auto_resume``; a run refused before
it starts leaves no folder and no log."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _deploy import tiny_checkpoint
from conftest import TINY_OPTS
from PIL import Image

from torchreid_sdtps import cli

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _popen(name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "tools" / f"{name}.py"), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=ENV)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before {what}:\n{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _interrupted_line(err: str, prog: str) -> str:
    """The whole stderr must be one line ``<prog>: interrupted; ...`` (no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: interrupted; "), err[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- extract

def _image_folder(folder: Path, num: int = 240) -> Path:
    """A --folder of ``num`` RGB/NI/TI samples: at batch size 1, tens of seconds of work."""
    image = Image.new("RGB", (32, 64), (40, 80, 120))
    for modality in ("RGB", "NI", "TI"):
        (folder / modality).mkdir(parents=True)
        for i in range(num):
            image.save(folder / modality / f"{i:04d}.jpg")
    return folder


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_extract_interrupted_mid_split_writes_nothing(synthetic_root, tmp_path, sig, code):
    _, _, _, ckpt = tiny_checkpoint(synthetic_root, tmp_path / "log")
    images = _image_folder(tmp_path / "images")
    out = tmp_path / "out" / "store"
    out.parent.mkdir()
    proc = _popen("extract", "--weights", ckpt, "--folder", str(images), "--cam", "0",
                  "-o", str(out), "--batch-size", "1")
    # the store's partial folder appears with the first chunk (8 of 240 samples)
    _wait_for(lambda: any(out.parent.iterdir()), proc, "the first chunk")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    line = _interrupted_line(err, "torchreid-sdtps-extract")
    assert line == "torchreid-sdtps-extract: interrupted; nothing written"
    assert list(out.parent.iterdir()) == []  # no store, no partial folder


# ----------------------------------------------------------------------------- train

def test_train_interrupted_keeps_its_checkpoint_and_resumes(synthetic_root, tmp_path):
    save = tmp_path / "run"
    common = ["data.root", str(synthetic_root), "data.save_dir", str(save), *TINY_OPTS,
              "test.eval_freq", "1", "test.compare_untrained", "False"]
    proc = _popen("train", *common, "train.max_epoch", "500")
    _wait_for(lambda: (save / "model" / "model.pth.tar-1").is_file(), proc,
              "the first checkpoint")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    line = _interrupted_line(err, "torchreid-sdtps-train")
    kept = re.search(r"kept (\S+model\.pth\.tar-(\d+)) and the log (\S+);", line)
    assert kept and "train.auto_resume True" in line, line
    ckpt, epoch, log = Path(kept.group(1)), int(kept.group(2)), Path(kept.group(3))
    assert ckpt.is_file() and log.is_file() and ckpt.parent == save / "model"
    assert out.strip() == ""  # no table: the run did not finish
    # the same command with train.auto_resume goes on from that checkpoint
    proc = _tool("train", *common, "train.max_epoch", str(epoch + 1),
                 "train.auto_resume", "True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((save / "results.json").read_text())
    assert summary["start_epoch"] == epoch and summary["epochs"] == epoch + 1
    assert (save / "model" / f"model.pth.tar-{epoch + 1}").is_file()
    assert f"checkpoint: {save / 'model' / f'model.pth.tar-{epoch + 1}'}" in proc.stdout


# ----------------------------------------------------------------------------- refusals

def _rgbnt201_missing_an_image(root: Path) -> Path:
    for split in ("train_171", "test"):
        for modality in ("RGB", "NI", "TI"):
            folder = root / "RGBNT201" / split / modality
            folder.mkdir(parents=True)
            for name in ("000001_cam1_0001.jpg", "000002_cam2_0001.jpg"):
                if not (split == "test" and modality == "NI" and name.startswith("000002")):
                    Image.new("RGB", (32, 64)).save(folder / name)
    return root


@pytest.mark.parametrize("case", ["data_absent", "image_missing", "out_of_range", "bad_lr"])
def test_a_refused_run_leaves_no_folder_and_no_log(tmp_path, capsys, case):
    save = tmp_path / "log" / "run"
    args = ["data.save_dir", str(save)]
    if case == "data_absent":
        args += ["--root", str(tmp_path / "nowhere"), "-s", "rgbnt201", "-t", "rgbnt201"]
        expected = "RGBNT201 not found"
    elif case == "image_missing":
        root = _rgbnt201_missing_an_image(tmp_path / "data")
        args += ["--root", str(root), "-s", "rgbnt201", "-t", "rgbnt201"]
        expected = "NI image missing"
    elif case == "out_of_range":
        args += ["sdtps.ratio", "1.5"]
        expected = "sdtps.ratio=1.5: expected in (0, 1]"
    else:
        args += ["train.lr", "-1"]
        expected = "train.lr -1.0: must be > 0"
    assert cli.run("train", args) == 2  # the console entry, in-process
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip() and "warn" not in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("torchreid-sdtps-train: error: "), lines
    assert expected in lines[0]
    assert not (tmp_path / "log").exists()  # no run folder, no log
    assert captured.out.strip() == ""
