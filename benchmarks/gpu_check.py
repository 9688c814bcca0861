#!/usr/bin/env python
"""GPU check of the real-data recipe: 2 epochs of ``sdtps_clip_vit_b16`` at 256x128 with the
RGBNT201 recipe (configs/rgbnt201_sdtps_clip.yaml, AMP on) on the synthetic tri-modal data,
random backbone weights (the check machine may have no internet).

Prints the training throughput (samples/s over the optimisation steps, CUDA-synchronised, data
loading excluded, and end to end), the peak CUDA memory and the mAP table of the last epoch.
Without CUDA it exits with status 2 and says so. ``benchmarks/gpu_check.sh`` runs it after the
install and the cost benchmark.

    python benchmarks/gpu_check.py [--epochs 2] [--root reid-data] [KEY VALUE ...]
    python benchmarks/gpu_check.py --smoke    # the same plumbing on the CPU, tiny model, seconds

``--smoke`` (what the tests run) keeps the recipe but swaps in ``sdtps_vit_tiny`` at 128x64 and
a small synthetic set, and runs on the CPU: it checks the script, not the GPU.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchreid_sdtps.engine.hooks import EngineHook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


class StepTimer(EngineHook):
    """Seconds and samples of the optimisation steps (batch loaded -> optimizer stepped),
    synchronised with the device when ``sync`` is given; data loading is left out."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync, self.seconds, self.samples, self._start = sync, 0.0, 0, 0.0

    def before_step(self, engine: Any, epoch: int, batch_idx: int) -> None:
        self.sync()
        self._start = time.perf_counter()

    def after_step(self, engine: Any, epoch: int, batch_idx: int, summary: dict[str, float]
                   ) -> None:
        self.sync()
        self.seconds += time.perf_counter() - self._start
        self.samples += int(engine.train_loader.batch_size)  # full batches (drop_last)


def overrides(epochs: int, save_dir: str) -> list[str]:
    """The RGBNT201 recipe on ``synthetic_msreid`` rendered at 256x128, ``epochs`` epochs."""
    return ["data.sources", "['synthetic_msreid']", "data.targets", "['synthetic_msreid']",
            "synthetic.height", "256", "synthetic.width", "128", "model.pretrained", "False",
            "train.max_epoch", str(epochs), "test.eval_freq", "-1",
            "test.missing_modalities", "False", "data.save_dir", save_dir]


SMOKE = ["model.name", "sdtps_vit_tiny", "data.height", "128", "data.width", "64",
         "synthetic.height", "128", "synthetic.width", "64", "synthetic.num_train_ids", "8",
         "synthetic.num_test_ids", "4", "synthetic.images_per_camera", "2",
         "train.batch_size", "16", "sampler.num_instances", "4", "data.workers", "0",
         "use_gpu", "False",
         "sdtps.use_amp", "False"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--root", default="reid-data")
    parser.add_argument("--save-dir", default="log/gpu_check")
    parser.add_argument("--smoke", action="store_true", help="CPU plumbing check, tiny model")
    args, opts = parser.parse_known_args(argv)
    cuda = not args.smoke
    if cuda and not torch.cuda.is_available():
        sys.stderr.write("gpu_check: CUDA is not available to torch (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda}); this check "
                         "needs an NVIDIA GPU and does nothing on the CPU\n")
        return 2
    import torchreid_sdtps
    from torchreid_sdtps import build, config
    from torchreid_sdtps.cli.common import results_table

    torchreid_sdtps.load_plugins()
    cfg = config.load_config(osp.join(REPO, "configs", "rgbnt201_sdtps_clip.yaml"),
                             overrides(args.epochs, args.save_dir)
                             + (SMOKE if args.smoke else []) + list(opts), root=args.root)
    timer = StepTimer(torch.cuda.synchronize if cuda else (lambda: None))
    _, _, _, _, engine = build.build_all(cfg, hooks=[timer])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_kwargs = config.engine_run_kwargs(cfg)
    run_kwargs.pop("test_only")
    engine.run(**run_kwargs)
    wall = time.perf_counter() - start
    peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB" if cuda else "n/a (CPU)"
    target = cfg.data.targets[0]
    res = engine.last_results[target]
    device = torch.cuda.get_device_name() if cuda else "CPU (--smoke)"
    print(f"device: {device} (torch {torch.__version__}, AMP "
          f"{'on' if engine.use_amp else 'off'}), batch {cfg.train.batch_size} x 3 modalities "
          f"at {cfg.data.height}x{cfg.data.width}")
    print(f"training: {timer.samples} samples in {timer.seconds:.1f} s of optimisation "
          f"steps = {timer.samples / timer.seconds:.1f} samples/s "
          f"(end to end incl. data loading and the final ranking: {wall:.1f} s)")
    print(f"peak CUDA memory: {peak}")
    print(results_table({f"{cfg.model.name} ({args.epochs} epochs, last epoch)": res},
                             f"{target}: {res['num_query']} queries, "
                             f"{res['num_gallery']} gallery images"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
