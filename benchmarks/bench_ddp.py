#!/usr/bin/env python
"""Training throughput (samples/s) with 1 process and with N processes under torchrun + DDP.

Each setting starts ``torchrun --standalone --nproc_per_node N`` on this script (``--worker``).
Every rank builds the model, wraps it as `build.build_all` does (``train.sync_bn`` optional,
``DistributedDataParallel``), and runs :class:`ImageSDTPSEngine`'s ``forward_backward``
(ID + global-batch triplet and alignment losses, optimizer step) on its ``B/N`` share of a
fixed random global batch of B samples (M=3 modalities). After ``--warmup`` steps it times
``--iters`` steps; the throughput is ``B * iters / (slowest rank's time)``, so the global batch
and the optimisation are the same for every N.

    python benchmarks/bench_ddp.py                        # CPU: 1 vs 2 processes (gloo)
    python benchmarks/bench_ddp.py --device cuda          # 1 GPU vs all GPUs (NCCL)
    python benchmarks/bench_ddp.py --procs 1,2 --batch 16 --iters 5 --threads 1

On the CPU each process gets ``--threads`` threads (default: the CPU count divided by the
number of processes, so every setting uses the same cores); on a 2-core machine expect no
speed-up from 2 processes: the point of the CPU run is that the distributed path works and
what its communication costs.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, REPO)
    import torchreid_sdtps
    from torchreid_sdtps import compat, config, dist
    from torchreid_sdtps.engine import ImageSDTPSEngine, ddp
    from torchreid_sdtps.models import sync_bn

    torch.set_num_threads(args.threads)
    dist.init_distributed()
    world, rank = dist.world_size(), dist.rank()
    cuda = args.device == "cuda"
    torch.manual_seed(0)
    torchreid_sdtps.load_plugins()
    factory = compat.model_factory()[args.model]
    size = (args.height, args.width)
    model = factory(num_classes=args.batch // 2, loss="triplet", pretrained=False,
                    img_size=size)
    if cuda:
        model = model.cuda()
    if args.sync_bn and world > 1:
        model = sync_bn.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dm = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=args.batch // 2,
                         sources=[], targets=[])
    engine = ddp.make_engine(ImageSDTPSEngine, config.get_default_config(), dm,
                             ddp.wrap_model(model), optimizer, use_gpu=cuda)
    engine.set_model_mode("train")
    share = args.batch // world
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(args.batch, 3, 3, *size, generator=g)
    pids = torch.arange(args.batch // 2).repeat_interleave(2)
    local = {"img": imgs[rank * share:(rank + 1) * share],
             "pid": pids[rank * share:(rank + 1) * share]}

    def step() -> None:
        engine.forward_backward(local)
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    elapsed = time.perf_counter() - start
    times = dist.all_gather_objects(elapsed)
    if dist.is_main_process():
        with open(args.result, "w", encoding="utf-8") as fh:
            json.dump({"procs": world, "seconds": max(times),
                       "samples_per_s": args.batch * args.iters / max(times)}, fh)
    dist.cleanup()


def _run(args: argparse.Namespace, procs: int) -> dict:
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    with tempfile.TemporaryDirectory() as tmp:
        result = osp.join(tmp, "result.json")
        cmd = [osp.join(osp.dirname(sys.executable), "torchrun"), "--standalone",
               "--nproc_per_node", str(procs), osp.abspath(__file__), "--worker",
               "--result", result, "--threads", str(threads)] + _forwarded(args)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        if proc.returncode != 0 or not osp.isfile(result):
            raise RuntimeError(f"torchrun with {procs} processes failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(result, encoding="utf-8") as fh:
            return dict(json.load(fh), threads=threads)


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The worker's options (model, sizes, batch, steps, device, SyncBN)."""
    out = ["--device", args.device, "--model", args.model, "--height", str(args.height),
           "--width", str(args.width), "--batch", str(args.batch), "--iters", str(args.iters),
           "--warmup", str(args.warmup)]
    return out + (["--sync-bn"] if args.sync_bn else [])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--procs", default="",
                   help="comma-separated process counts (default: 1,2 on the CPU, 1,<#GPUs> "
                        "on CUDA)")
    p.add_argument("--model", default="sdtps_vit_tiny")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=16, help="global batch (P x K, K=2)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per process (0: CPU count / processes)")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return []
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    counts = [int(c) for c in args.procs.split(",")] if args.procs else \
        [1, torch.cuda.device_count() if args.device == "cuda" else 2]
    if args.batch % (2 * max(counts)):
        raise SystemExit(f"--batch {args.batch} must split into P x K (K=2) identities "
                         f"evenly over {max(counts)} processes")
    rows = [_run(args, n) for n in dict.fromkeys(counts)]
    base = rows[0]["samples_per_s"]
    print(f"DDP throughput, {args.model} {args.height}x{args.width} M=3, global batch "
          f"{args.batch}, {args.iters} timed steps, device {args.device}, "
          f"sync_bn={args.sync_bn}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'processes':>10} {'threads':>8} {'s/step':>8} {'samples/s':>10} {'speed-up':>9}")
    for r in rows:
        print(f"{r['procs']:>10} {r['threads']:>8} {r['seconds'] / args.iters:>8.3f} "
              f"{r['samples_per_s']:>10.2f} {r['samples_per_s'] / base:>8.2f}x")
    return rows


if __name__ == "__main__":
    main()
