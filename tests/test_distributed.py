"""DDP on the CPU (gloo, 2 processes): sampler sharding, exact global-batch gradients with
SyncBN, sharded evaluation, rank-0-only IO, and torchrun's restart with auto-resume.

The process checks start real processes: ``tests/_ddp_worker.py`` (two ranks started directly,
while the single-process reference runs the same code in the test process) and
``tools/train.py`` under ``torchrun``.
"""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys

import _ddp_worker
import pytest
import torch
from conftest import TINY_OPTS

from torchreid_sdtps import config
from torchreid_sdtps.config import ConfigError
from torchreid_sdtps.data.samplers import DistributedIdentitySampler
from torchreid_sdtps.engine import ddp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYTHON = sys.executable
TORCHRUN = osp.join(osp.dirname(PYTHON), "torchrun")
TIMEOUT_S = 600  # a hung collective fails the test instead of blocking the suite


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _start(cmd: list[str], log: str, **env: str) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr into the file ``log`` (never a full pipe)."""
    with open(log, "w", encoding="utf-8") as fh:
        return subprocess.Popen(cmd, env=_env(**env), stdout=fh, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], logs: list[str], what: str) -> None:
    """Wait for ``procs`` (killed after TIMEOUT_S); fail with the end of their logs."""
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    tails = "\n".join(_read(f)[-3000:] for f in logs)
    assert not bad, f"{what}: processes (index, exit code) {bad} failed:\n{tails}"


# ----------------------------------------------------------------------------- sampler

def _samples(num_ids: int = 10, per_id: int = 5) -> list[tuple]:
    # identity 3 has a single image (drawn with replacement up to K)
    return [(f"img{i}_{j}",  i, j % 2, 0) for i in range(num_ids)
            for j in range(1 if i == 3 else per_id)]


def test_sampler_ranks_get_disjoint_identities_whose_union_is_the_pk_batch():
    data, b, k, world = _samples(), 8, 2, 2
    ranks = [DistributedIdentitySampler(data, b, k, num_replicas=world, rank=r, seed=5)
             for r in range(world)]
    single = DistributedIdentitySampler(data, b, k, num_replicas=1, rank=0, seed=5)
    for epoch in (0, 1):
        for s in ranks + [single]:
            s.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) > 0
        per = b // world
        steps = len(shares[0]) // per
        ref = list(single)
        assert len(ref) == steps * b == len(single)
        for t in range(steps):
            parts = [sh[t * per:(t + 1) * per] for sh in shares]
            pids = [[data[i][1] for i in part] for part in parts]
            assert not set(pids[0]) & set(pids[1])  # disjoint identities per step
            union = pids[0] + pids[1]
            counts = {p: union.count(p) for p in set(union)}
            assert len(counts) == b // k and set(counts.values()) == {k}  # a valid P x K batch
            # one process with batch B sees the same samples, in rank order
            assert parts[0] + parts[1] == ref[t * b:(t + 1) * b]
    ranks[0].set_epoch(0)
    first = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first  # each epoch draws a new permutation


def test_sampler_rejects_batches_that_do_not_split():
    with pytest.raises(ValueError, match="divisible by the 3 ranks"):
        DistributedIdentitySampler(_samples(), 8, 2, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        DistributedIdentitySampler(_samples(), 9, 2, num_replicas=1, rank=0)


def test_single_process_refuses_sync_bn_and_bad_sampler_mode():
    cfg = config.get_default_config()
    cfg.train.sync_bn = True
    with pytest.raises(ConfigError, match="train.sync_bn needs a distributed run"):
        ddp.convert_model(torch.nn.BatchNorm1d(4), cfg)
    with pytest.raises(ConfigError, match="sampler.distributed must be"):
        config.load_config(opts=["sampler.distributed", "sometimes"])


def test_restart_store_prefix_only_where_the_restart_count_is_shared(monkeypatch, caplog):
    from torchreid_sdtps import dist

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    assert dist._shared_store_attempt() == "2"  # one machine: one agent, one count
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with caplog.at_level("WARNING"):
        assert dist._shared_store_attempt() is None  # counts differ across machines
    assert dist.FRESH_STORE_ENV in caplog.text
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # fresh store per restart
    assert dist._shared_store_attempt() is None


# ----------------------------------------------------------------------------- 2 ranks vs 1

@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    """Results of the 2-rank worker and the 1-process reference (run concurrently)."""
    out = tmp_path_factory.mktemp("ddp_worker")
    script = osp.join(REPO, "tests", "_ddp_worker.py")
    port = str(_free_port())
    logs = [str(out / f"rank{r}.log") for r in range(2)]
    procs = [_start([PYTHON, script, str(out / "ddp")], logs[r], RANK=str(r),
                    LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=port) for r in range(2)]
    try:
        _ddp_worker.main(str(out / "ref"))  # the 1-process reference, meanwhile, in-process
    finally:
        _wait(procs, logs, "ddp worker")
    ref = torch.load(out / "ref" / "result.pt", weights_only=False)
    res = torch.load(out / "ddp" / "result.pt", weights_only=False)
    assert (ref["world"], res["world"]) == (1, 2)
    return out, ref, res


def test_two_ranks_with_half_batches_match_one_process(worker_runs):
    """3 SGD steps, SyncBN, global triplet + alignment losses. Tolerance atol 1e-5 and rtol
    1e-4: the same float32 arithmetic in another summation order (gathered batch-hard mining,
    all-reduced gradients and BatchNorm sums) differs in the last bits, ~1e-7 per value
    (measured max |diff| 1.2e-7). Measured without SyncBN the max |diff| is 2.6e-2, with
    per-rank (not gathered) triplet and alignment losses 6.5e-2: the tolerance tells them
    apart by three orders of magnitude."""
    _, ref, res = worker_runs
    assert ref["params"].keys() == res["params"].keys()
    for name, p in ref["params"].items():
        torch.testing.assert_close(res["params"][name], p, atol=1e-5, rtol=1e-4, msg=name)
    for name, b in ref["buffers"].items():  # BNNeck running statistics of the global batch
        torch.testing.assert_close(res["buffers"][name].float(), b.float(), atol=1e-5,
                                   rtol=1e-4, msg=name)
    for r, d in zip(ref["losses"], res["losses"]):  # the mined losses are the global ones
        for key in ("loss_t", "loss_align"):
            assert d[key] == pytest.approx(r[key], abs=1e-5)


def test_soft_margin_triplet_and_alignment_losses_are_mined_over_the_global_batch(tmp_path):
    """DeMo's soft-margin triplet and the alignment loss under GlobalBatchLoss on 2 ranks x
    half a P x K batch: every rank's loss is the single-process loss of the whole batch, and
    each rank's input gradient is world x the full-batch gradient of its half (the gather's
    backward sums the ranks' identical losses; DDP's gradient average then divides by world).
    A per-rank loss would differ: it mines only inside the rank's half."""
    script = osp.join(REPO, "tests", "_ddp_worker.py")
    port = str(_free_port())
    logs = [str(tmp_path / f"rank{r}.log") for r in range(2)]
    procs = [_start([PYTHON, script, "--losses", str(tmp_path)], logs[r], RANK=str(r),
                    LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=port) for r in range(2)]
    _wait(procs, logs, "ddp loss worker")
    ranks = [torch.load(tmp_path / f"losses_rank{r}.pt", weights_only=False) for r in range(2)]
    for name, crit in _ddp_worker.loss_criteria().items():
        x, pids = _ddp_worker.loss_inputs()[name]
        x = x.clone().requires_grad_(True)
        ref = crit(x, pids)
        ref.backward()
        half = len(pids) // 2
        local = crit(x[:half].detach(), pids[:half])
        assert abs(float(local) - float(ref.detach())) > 1e-3, name  # the check can tell them apart
        for r, res in enumerate(ranks):
            got = res["losses"][name]
            torch.testing.assert_close(got["loss"], ref.detach(), atol=1e-6, rtol=1e-5,
                                       msg=name)
            torch.testing.assert_close(got["grad"], 2 * x.grad[r * half:(r + 1) * half],
                                       atol=1e-6, rtol=1e-5, msg=name)


def test_distributed_engine_wraps_the_recipe_losses():
    """``sampler.distributed always`` (one process) gives the engine global-batch triplet and
    alignment criteria, including DeMo's soft-margin triplet of the recipe, in a class made
    before construction (no class swap of a built engine)."""
    from types import SimpleNamespace

    from torchreid_sdtps.engine import ImageSDTPSEngine
    from torchreid_sdtps.losses import GlobalBatchLoss, SoftMarginTripletLoss

    model = torch.nn.Linear(2, 2)
    dm = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=2, sources=["toy"],
                         targets=["toy"])
    cfg = config.get_default_config()
    cfg.sampler.distributed = "always"
    engine = ddp.make_engine(ImageSDTPSEngine, cfg, dm, model,
                             torch.optim.SGD(model.parameters(), lr=0.1), use_gpu=False,
                             soft_margin=True, margin=0.0)
    assert isinstance(engine, ddp.DistributedEngineMixin) and isinstance(engine, ImageSDTPSEngine)
    assert type(engine) is ddp.engine_class(ImageSDTPSEngine, cfg)  # one class per engine class
    assert isinstance(engine.criterion.triplet, GlobalBatchLoss)
    assert isinstance(engine.criterion.triplet.criterion, SoftMarginTripletLoss)
    assert isinstance(engine.criterion.align, GlobalBatchLoss)
    assert engine.seed == cfg.train.seed


def test_distributed_evaluation_equals_single_process(worker_runs):
    _, ref, res = worker_runs
    assert res["results"]["num_query"] == 7 and res["results"]["num_gallery"] == 23
    assert res["results"]["mAP"] == pytest.approx(ref["results"]["mAP"], abs=1e-9)
    assert res["results"]["cmc"] == pytest.approx(ref["results"]["cmc"], abs=1e-9)


def test_only_rank0_writes_the_checkpoint(worker_runs):
    out = worker_runs[0]
    assert osp.isfile(out / "ddp" / "save_rank0" / "model" / "model.pth.tar-1")
    assert not osp.exists(out / "ddp" / "save_rank1")
    state = torch.load(out / "ddp" / "save_rank0" / "model" / "model.pth.tar-1",
                       weights_only=False)
    assert not any(k.startswith("module.") for k in state["state_dict"])  # unwrapped model


# ----------------------------------------------------------------------------- torchrun

# conftest's tiny set, evaluated in batches of 8, 2 epochs, resumable
TINY = [*TINY_OPTS, "test.batch_size", "8", "train.max_epoch", "2", "test.eval_freq", "1",
        "test.compare_untrained", "False", "train.auto_resume", "True"]


def _torchrun(root, save_dir, log_dir, max_restarts: int, *opts: str, **env: str) -> None:
    """``torchrun --standalone --nproc_per_node 2 tools/train.py ...`` to completion; each
    rank's stdout/stderr land under ``log_dir`` (torchrun's own output in ``log_dir``.log)."""
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max-restarts",
           str(max_restarts), "--log-dir", str(log_dir), "--redirects", "3",
           osp.join(REPO, "tools", "train.py"), "data.root", str(root),
           "data.save_dir", str(save_dir), *TINY, *opts]
    log = f"{log_dir}.log"
    _wait([_start(cmd, log, **env)], [log], "torchrun")


def _rank_logs(log_dir, rank: int, stream: str) -> str:
    files = glob.glob(osp.join(str(log_dir), "**", "attempt_*", str(rank), f"{stream}.log"),
                      recursive=True)
    assert files, f"no {stream}.log of rank {rank} under {log_dir}"
    return "".join(_read(f) for f in files)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """An uninterrupted 2-process torchrun of the tiny synthetic config (2 epochs)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    (tmp / "data").mkdir()
    _torchrun(tmp / "data", tmp / "plain", tmp / "logs_plain", 0)
    return tmp


def test_killed_worker_restarts_resumes_and_ends_like_an_uninterrupted_run(plain_run):
    tmp = plain_run
    marker = tmp / "failed-once"
    # rank 1 exits abruptly before batch 2 of epoch 2 (after the epoch-1 checkpoint)
    _torchrun(tmp / "data", tmp / "faulty", tmp / "logs_faulty", 1,
              **{ddp.FAIL_AT_ENV: "1:1:1", ddp.FAIL_MARKER_ENV: str(marker)})
    assert marker.exists()  # rank 1 did die ...
    assert glob.glob(str(tmp / "logs_faulty" / "**" / "attempt_1"), recursive=True)
    a = json.loads(_read(tmp / "plain" / "results.json"))
    b = json.loads(_read(tmp / "faulty" / "results.json"))
    assert (a["start_epoch"], b["start_epoch"]) == (0, 1)  # ... the group resumed at epoch 1
    assert a["trained"] and b["trained"] == a["trained"]  # the uninterrupted run's metrics


def test_a_finished_run_restarted_under_torchrun_completes(plain_run):
    """The same torchrun command on a run whose checkpoint already ends at train.max_epoch (a
    restart after the last checkpoint): both ranks rank it, rank 0 prints the table and writes
    results.json with the whole run's time, exit 0."""
    tmp = plain_run
    shutil.copytree(tmp / "plain", tmp / "finished")
    _torchrun(tmp / "data", tmp / "finished", tmp / "logs_finished", 1)
    a = json.loads(_read(tmp / "plain" / "results.json"))
    b = json.loads(_read(tmp / "finished" / "results.json"))
    assert b["finished_before"] and b["start_epoch"] == 2 and b["attempts"] == 2
    assert b["trained"] == a["trained"] and b["wall_s"] > b["wall_s_last_attempt"]
    assert "trained (2 epochs)" in _rank_logs(tmp / "logs_finished", 0, "stdout")


def _check_rank0_only(logs, save, rank0_says: str) -> None:
    """Rank 1 printed and logged nothing and wrote no file; rank 0 wrote one of each."""
    assert _rank_logs(logs, 1, "stdout") == ""
    err1 = _rank_logs(logs, 1, "stderr")
    assert "Configuration" not in err1 and "epoch" not in err1
    out0 = _rank_logs(logs, 0, "stdout")
    assert "checkpoint: " in out0 and "Configuration" not in out0  # rank 0 shows its result
    files = sorted(osp.relpath(p, save) for p in glob.glob(str(save / "**" / "*"),
                                                            recursive=True) if osp.isfile(p))
    texts = [f for f in files if f.startswith("train.log-")]
    log0 = (save / texts[0]).read_text() if texts else ""
    assert "Configuration" in log0 and rank0_says in log0  # rank 0 does log, into its file
    events = [f for f in files if "tfevents" in f]
    assert len(texts) == 1 and len(events) == 1, files
    assert set(files) - set(texts) - set(events) == {
        "results.json", "run_state.json", osp.join("model", "model.pth.tar-1"),
        osp.join("model", "model.pth.tar-2")}


def test_only_rank0_logs_and_writes_files(plain_run):
    _check_rank0_only(plain_run / "logs_plain", plain_run / "plain", "trained (2 epochs)")


def test_stock_engine_with_sync_bn_trains_under_torchrun(plain_run):
    """torchreid's own ImageTripletEngine through the same wrapping, SyncBN on."""
    tmp = plain_run
    _torchrun(tmp / "data", tmp / "stock", tmp / "logs_stock", 0, "sdtps.engine", "triplet",
              "train.sync_bn", "True")
    _check_rank0_only(tmp / "logs_stock", tmp / "stock", "** Results **")
    state = torch.load(tmp / "stock" / "model" / "model.pth.tar-2", weights_only=False)
    assert not any(k.startswith("module.") for k in state["state_dict"])


def test_sampler_mode_never_is_refused_under_ddp(monkeypatch):
    """``sampler.distributed never`` cannot be honoured with several processes (every rank would
    draw its own batches): refused, the loader left alone; one process keeps its loader."""
    cfg = config.get_default_config()
    cfg.sampler.distributed = "never"
    loader = object()
    dm = type("DM", (), {"train_loader": loader})()
    monkeypatch.setattr(ddp.dist, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="'never' cannot be honoured under DDP"):
        ddp.use_distributed_sampler(dm, cfg)
    assert dm.train_loader is loader
    monkeypatch.setattr(ddp.dist, "world_size", lambda: 1)
    ddp.use_distributed_sampler(dm, cfg)
    assert dm.train_loader is loader
