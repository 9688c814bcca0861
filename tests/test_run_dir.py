"""One run per save_dir and no run replacing another: the run-dir lock (held for the run's
life, refused at once naming the holder, a killed holder does not block), fresh runs refused
in a folder holding another run, and the Checkpointer's names and single reads."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_OPTS

from torchreid_sdtps import cli
from torchreid_sdtps.checkpoint import Checkpointer, RunDirLockedError, RunLock
from torchreid_sdtps.checkpoint import files as checkpoint_files
from torchreid_sdtps.cli import train as train_cmd

HOLD = ("import sys, time; from torchreid_sdtps.checkpoint import RunLock\n"
        "with RunLock(sys.argv[1]):\n"
        "    print('held', flush=True); time.sleep(600)\n")


def _holder(run_dir) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock (started, lock taken)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.stdout.readline().strip() == "held"
    return proc


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_args(root, save, *extra):
    return ["data.root", str(root), "data.save_dir", str(save), *TINY_OPTS,
            "test.compare_untrained", "False", "train.max_epoch", "1", *extra]


def test_a_held_run_dir_refuses_a_second_run_at_once_and_a_killed_holder_does_not_block(
        synthetic_root, tmp_path, capsys):
    save = tmp_path / "run"
    holder = _holder(save)
    try:
        with pytest.raises(RunDirLockedError, match=rf"pid {holder.pid} on host \S+, started"):
            RunLock(str(save)).__enter__()
        start = time.time()
        assert cli.run("train", _train_args(synthetic_root, save)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by run pid {holder.pid}" in err[0], err
        assert time.time() - start < 60  # refused at once, not after training
        assert not list(save.glob("train.log-*")) and not (save / "model").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the lock file stays, the lock does not
        holder.wait()
    assert (save / ".run.lock").exists()
    summary = train_cmd.main(_train_args(synthetic_root, save))
    assert os.path.isfile(summary["checkpoint"])
    assert not (save / ".run.lock.holder.json").exists()  # released at the end


def test_two_runs_started_together_one_is_refused_the_other_kept(synthetic_root, tmp_path):
    save = tmp_path / "race"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "train.py")
    procs = [subprocess.Popen([sys.executable, tool, *_train_args(synthetic_root, save,
                                                                   "train.seed", seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in ("1", "7")]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    winner = next(i for i, p in enumerate(procs) if p.returncode == 0)
    loser_err = [ln for ln in outs[1 - winner][1].splitlines() if "error:" in ln]
    assert len(loser_err) == 1 and ("in use by run pid" in loser_err[0]
                                    or "holds another run" in loser_err[0]), loser_err
    summary = json.loads((save / "results.json").read_text())
    ckpt = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)
    assert f"seed: {('1', '7')[winner]}" in ckpt["meta"]["config"]  # the winner's own weights


def test_a_fresh_run_never_replaces_another_and_max_epoch_0_changes_nothing(
        synthetic_root, tmp_path, capsys):
    save = tmp_path / "done"
    first = train_cmd.main(_train_args(synthetic_root, save))
    before = _digest(save)
    for extra, says in ((["train.max_epoch", "0"], "train.max_epoch 0: must be >= 1"),
                        (["train.start_epoch", "1"], "train.start_epoch 1 >= train.max_epoch 1"),
                        (["train.seed", "7"], "holds another run (model/model.pth.tar-1, "
                                              "results.json, run_state.json)")):
        assert cli.run("train", _train_args(synthetic_root, save, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert _digest(save) == before  # nothing written, nothing replaced
    # continuing the run itself is allowed (a finished run is ranked again)
    again = train_cmd.main(_train_args(synthetic_root, save, "train.auto_resume", "True"))
    assert again["finished_before"] and again["checkpoint"] == first["checkpoint"]


def test_checkpointer_names_latest_and_reads_a_checkpoint_once(synthetic_root, tmp_path,
                                                                 monkeypatch):
    ck = Checkpointer(str(tmp_path / "run"))
    assert ck.path(3).endswith(os.path.join("run", "model", "model.pth.tar-3"))
    assert ck.best_path().endswith("model-best.pth.tar") and ck.latest() is None
    for epoch in (2, 10, 9):
        ck.save({"state_dict": {"w": torch.zeros(1)}, "epoch": epoch})
    assert ck.latest() == ck.path(10)
    partial = tmp_path / "run" / "model" / ".model.pth.tar-11.abcdefgh.partial"
    partial.write_bytes(b"x")
    assert ck.remove_partials() == [str(partial)]
    # torchreid-sdtps-test reads the checkpoint it ranks once
    save = tmp_path / "trained"
    summary = train_cmd.main(_train_args(synthetic_root, save))
    reads = []
    real = checkpoint_files.load_file

    def counting(path, *args, **kwargs):
        reads.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_files, "load_file", counting)
    assert cli.run("test", ["data.root", str(synthetic_root), "data.save_dir", str(save),
                            *TINY_OPTS]) == 0
    assert reads == [summary["checkpoint"]]
    reads.clear()  # and so does the deploy path (extract, export, visualize)
    from torchreid_sdtps.deploy.extractor import load_model

    load_model(summary["checkpoint"])
    assert reads == [summary["checkpoint"]]
