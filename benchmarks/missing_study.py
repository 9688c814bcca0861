#!/usr/bin/env python
"""Training for missing modalities: the demo trained without and with it, several seeds each,
ranked on the full missing-modality table.

Each run is the CPU demo (``torchreid_sdtps/configs/synthetic_demo.yaml``: ``sdtps_vit_tiny``,
15 epochs) trained with ``tools/train.py`` and ranked with ``tools/test.py --missing``, in a
subprocess of its own, seeds one after the other. Variants (``--variants``):

==========  ===================================================================================
without     no modality dropout, ``sdtps.mask_missing False`` (the demo as it was)
with        ``train.modality_dropout.prob 0.5``, subsets RGB / NI / TI, ``.triplet complete``,
            ``sdtps.mask_missing True``
==========  ===================================================================================

plus, from the ``without`` checkpoints (no training), ``without+mask``: the same weights ranked
with ``sdtps.mask_missing True``, i.e. what masking alone does at evaluation time.

    python benchmarks/missing_study.py                 # 6 demo runs (~3 min each on 2 quiet cores)
    python benchmarks/missing_study.py --seeds 1 --epochs 4 --work log/missing_quick

Runs live in ``--work`` (default ``log/missing_study``): ``<variant>/seed<n>/`` holds the
checkpoint, ``results.json`` and ``test_results.json``; a finished step is never rerun, so an
interrupted study resumes where it stopped. The table (mAP, mean ± sample std over the seeds)
is printed as Markdown and written with every number to ``<work>/missing_study.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from _common import command_line, machine, now

from torchreid_sdtps.choices import MISSING_SETTINGS
from torchreid_sdtps.io import write_json

__all__ = ["VARIANTS", "EVAL_ONLY", "run_variant", "table", "main"]

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: training overrides of each variant (explicit, so the demo config's own choice does not matter)
VARIANTS: dict[str, tuple[str, ...]] = {
    "without": ("train.modality_dropout.prob", "0.0", "sdtps.mask_missing", "False"),
    "with": ("train.modality_dropout.prob", "0.5",
             "train.modality_dropout.subsets", "['RGB', 'NI', 'TI']",
             "train.modality_dropout.triplet", "complete", "sdtps.mask_missing", "True"),
}
#: evaluation-only variants: (trained variant whose checkpoints are ranked, test overrides)
EVAL_ONLY: dict[str, tuple[str, tuple[str, ...]]] = {
    "without+mask": ("without", ("sdtps.mask_missing", "True")),
}


def _run(cmd: list[str], log: str) -> None:
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}); see {log}")


def _missing(path: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as fh:
        res = json.load(fh)["missing"]
    return {k: float(v["mAP"]) for k, v in next(iter(res.values())).items()}


def run_variant(name: str, seed: int, work: str, epochs: int | None,
                extra: Sequence[str] = ()) -> dict[str, float]:
    """Train (unless done) and rank (unless done) one seed of a variant; ``{setting: mAP}``."""
    trained, test_opts = (name, ()) if name in VARIANTS else EVAL_ONLY[name]
    train_dir = osp.join(work, trained, f"seed{seed}")
    opts = [*VARIANTS[trained], "train.seed", str(seed), "test.compare_untrained", "False",
            *extra]
    if epochs is not None:
        opts += ["train.max_epoch", str(epochs)]
    py = sys.executable
    if not osp.isfile(osp.join(train_dir, "results.json")):
        os.makedirs(train_dir, exist_ok=True)
        _run([py, "tools/train.py", "data.save_dir", train_dir, *opts],
             osp.join(train_dir, "train.log"))
    out_dir = osp.join(work, name, f"seed{seed}")
    result = osp.join(out_dir, "test_results.json")
    if not osp.isfile(result):
        os.makedirs(out_dir, exist_ok=True)
        weights = _latest(train_dir)
        _run([py, "tools/test.py", "--missing", "--weights", weights, "data.save_dir", out_dir,
              *opts, *test_opts], osp.join(out_dir, "test.log"))
    return _missing(result)


def _latest(train_dir: str) -> str:
    with open(osp.join(train_dir, "results.json"), encoding="utf-8") as fh:
        ckpt = json.load(fh)["checkpoint"]
    return ckpt if osp.isabs(ckpt) else osp.join(ROOT, ckpt)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs: dict[str, dict[int, dict[str, float]]]) -> tuple[str, dict[str, Any]]:
    """Markdown table (mAP %, mean ± std over seeds) and its numbers, incl. the single-missing
    average (mean over seeds of each run's average over RGB, NI, TI)."""
    cols = list(MISSING_SETTINGS)
    head = "| variant | seeds | " + " | ".join(cols) + " | single-missing avg |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    summary: dict[str, Any] = {}
    for name, by_seed in runs.items():
        if not by_seed:
            continue
        cells, entry = [], {}
        for col in cols:
            mean, std = _stats([100 * r[col] for r in by_seed.values()])
            entry[col] = {"mean": mean, "std": std}
            cells.append(f"{mean:.1f} ± {std:.1f}")
        single = [100 * statistics.fmean(r[c] for c in ("RGB", "NI", "TI"))
                  for r in by_seed.values()]
        mean, std = _stats(single)
        entry["single_missing_avg"] = {"mean": mean, "std": std}
        summary[name] = entry
        lines.append(f"| {name} | {len(by_seed)} | " + " | ".join(cells)
                     + f" | {mean:.1f} ± {std:.1f} |")
    return "\n".join(lines), summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["without", "with", "without+mask"],
                   choices=[*VARIANTS, *EVAL_ONLY])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=None, help="override train.max_epoch")
    p.add_argument("--work", default="log/missing_study", help="run folder (resumable)")
    p.add_argument("opts", nargs="*", help="extra KEY VALUE overrides for every run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work if osp.isabs(args.work) else osp.join(ROOT, args.work)
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for name in args.variants:  # variant by variant, seed after seed: one run at a time
        runs[name] = {}
        for seed in args.seeds:
            runs[name][seed] = run_variant(name, seed, work, args.epochs, args.opts)
            print(f"{name} seed {seed}: " + "  ".join(
                f"{k} {100 * v:.1f}" for k, v in runs[name][seed].items()), flush=True)
    md, summary = table(runs)
    report = {"command": command_line("missing_study.py", argv), "date": now(),
              "machine": machine(), "epochs": args.epochs, "variants": {
                  **{k: list(v) for k, v in VARIANTS.items()},
                  **{k: {"trained": t, "test": list(o)} for k, (t, o) in EVAL_ONLY.items()}},
              "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()},
              "summary": summary, "table": md}
    write_json(report, osp.join(work, "missing_study.json"))
    print(md)
    return report


if __name__ == "__main__":
    main()
