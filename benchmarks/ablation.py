#!/usr/bin/env python
"""What SDTPS contributes to a real-data run: three variants, one recipe, the same seeds.

    python benchmarks/ablation.py --config configs/rgbnt201_sdtps_clip.yaml --root reid-data
    python benchmarks/ablation.py --config configs/rgbnt201_sdtps_clip.yaml --seeds 1111 --epochs 2
    python benchmarks/ablation.py --smoke        # CPU, tiny model, synthetic data: seconds
    python benchmarks/ablation.py ... --resume   # reuse the finished runs in --out

Variants (everything else is the config's recipe; trailing ``KEY VALUE`` overrides apply to
all three, then each variant sets its own keys):

=============  ===========================================================================
no_sdtps       DeMo without HDM/ATM: backbone + global-local guide + ``ori`` head only
               (``sdtps.use_sdtps False``, ``sdtps.weight_align 0``); eval feature ``ori``
sdtps_block    the SDTPS block, no alignment loss (``sdtps.weight_align 0``)
sdtps_align    the shipped config: SDTPS + its cross-modal alignment loss
=============  ===========================================================================

Each run trains through the package's build path (``build_all`` and the engine's ``run``, what
``tools/train.py`` trains with; ``benchmarks/harness.py``) in ``<out>/<variant>/seed<seed>/``.
Two numbers per run: the **last epoch** (what we report) and, labelled, the **best epoch on the
test set** (DeMo's selection; optimistic), read by an engine hook from every evaluation.
``test.eval_freq`` defaults to 1 here (DeMo evaluates every epoch) for the best-on-test column;
override it to save time. Finished runs are appended to ``<out>/runs.jsonl``; ``--resume``
reuses those of the same config, root, overrides, variant and seed. Writes
``<out>/ablation.json`` and ``<out>/ablation.md`` and prints the table: mAP, R1, R5, R10 per
variant, mean ± std (sample std) over the seeds.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import os.path as osp
import sys
from collections.abc import Sequence
from typing import Any

import harness
import torch
from harness import Setting, command_line, machine, now

from torchreid_sdtps.io import atomic_path, write_json

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
METRICS = ("mAP", "R1", "R5", "R10")

#: variant -> the config overrides that make it (applied after the user's overrides)
VARIANTS: dict[str, Setting] = {
    "no_sdtps": Setting("no SDTPS (ori head only)",
                        ("sdtps.use_sdtps", "False", "sdtps.weight_align", "0.0")),
    "sdtps_block": Setting("SDTPS block (align 0)", ("sdtps.weight_align", "0.0")),
    "sdtps_align": Setting("SDTPS + alignment"),
    # the demo's missing-modality method (docs/engine.md, issue 25): --variants sdtps_missing
    "sdtps_missing": Setting("SDTPS + alignment, missing-modality method",
                             ("sdtps.mask_missing", "True", "sdtps.missing_match", "present",
                              "sdtps.test_feature", "ori")),
}
#: what runs without --variants (the recipe's three; sdtps_missing on request)
DEFAULT_VARIANTS = ("no_sdtps", "sdtps_block", "sdtps_align")

#: --smoke: the recipe on a tiny model and synthetic data, on the CPU (what the tests run)
SMOKE = ["model.name", "sdtps_vit_tiny", "model.pretrained", "False",
         "data.sources", "['synthetic_msreid']", "data.targets", "['synthetic_msreid']",
         "data.height", "64", "data.width", "32", "synthetic.height", "64", "synthetic.width", "32",
         "synthetic.num_train_ids", "6", "synthetic.num_test_ids", "6",
         "synthetic.num_cameras", "2", "synthetic.images_per_camera", "2",
         "train.batch_size", "8", "sampler.num_instances", "4", "test.batch_size", "64",
         "data.workers", "0", "sdtps.use_amp", "False", "train.print_freq", "1000"]


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Further arguments: KEY VALUE config overrides.")
    p.add_argument("--config", default=osp.join(REPO, "configs", "rgbnt201_sdtps_clip.yaml"))
    p.add_argument("--seeds", default=None,
                   help="comma-separated train.seed values (default 1111,1112,1113; smoke 1,2)")
    p.add_argument("--epochs", type=int, default=None, help="train.max_epoch (default: config's)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default cuda (--smoke: cpu)")
    p.add_argument("--root", default="reid-data", help="data root (data.root)")
    p.add_argument("--out", default="log/ablation", help="folder for the runs and the table")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs in --out that finished with the same config and keys")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, sdtps_vit_tiny, synthetic data, 1 epoch, seeds 1,2")
    args, opts = p.parse_known_args(argv)
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2 or any(k.startswith("-") for k in opts[0::2]):
        p.error(f"unrecognised arguments {opts}: overrides are KEY VALUE pairs")
    if args.smoke and args.device == "cuda":
        p.error("--smoke runs on the CPU; drop --device cuda")
    if args.seeds is None:
        args.seeds = "1,2" if args.smoke else "1111,1112,1113"
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants or not args.seeds:
        p.error(f"--variants from {list(VARIANTS)} and at least one seed; got "
                f"{args.variants} / {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    if args.smoke:
        args.epochs = args.epochs or 1
    return args, opts


def run_overrides(args: argparse.Namespace, opts: Sequence[str], variant: str,
                  seed: int) -> list[str]:
    """The ``KEY VALUE`` list of one run: smoke/device/epochs, reporting keys, the user's
    overrides, then the variant's keys."""
    out = (SMOKE if args.smoke else []) + ["use_gpu", str(args.device == "cuda"),
                                           "test.eval_freq", "1"]
    if args.epochs is not None:
        out += ["train.max_epoch", str(args.epochs)]
    out += list(opts) + VARIANTS[variant].overrides()
    return out + ["train.seed", str(seed),
                  "data.save_dir", osp.join(args.out, variant, f"seed{seed}")]


def budget(args: argparse.Namespace, opts: Sequence[str]) -> dict[str, Any]:
    """What makes two runs of a variant and seed the same: the config file's text, the root,
    the device, the epochs and the user's overrides."""
    with open(args.config, "rb") as fh:
        text = hashlib.sha256(fh.read()).hexdigest()
    return {"study": "ablation", "config": text, "root": args.root, "smoke": args.smoke,
            "device": args.device, "epochs": args.epochs, "overrides": list(opts)}


def train_one(args: argparse.Namespace, opts: Sequence[str], variant: str, seed: int
              ) -> dict[str, Any]:
    """One run through the package's build path (``build_all`` + the engine's ``run``): its
    last-epoch results and, from an engine hook, the best epoch on the test set."""
    from torchreid_sdtps import config

    overrides = run_overrides(args, opts, variant, seed)
    cfg = config.load_config(args.config, overrides, root=args.root)
    record = harness.RecordHook()
    done = harness.train_and_rank(cfg, (), hooks=[record])
    last = next(iter(done.results.values()))
    best = record.best()
    return {"variant": variant, "epochs": int(cfg.train.max_epoch),
            "target": list(cfg.data.targets)[0],
            "use_sdtps": bool(cfg.sdtps.use_sdtps), "weight_align": float(cfg.sdtps.weight_align),
            "last": {k: last[k] for k in METRICS},
            "best_on_test": None if best is None else {**{k: best[k] for k in METRICS},
                                                       "epoch": best["epoch"]}}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{variant: {"last": {metric: {mean, std, n}}, "best_on_test": ...}}`` (fractions)."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for kind in ("last", "best_on_test"):
            rows = [r[kind] for r in mine if r[kind] is not None]
            entry[kind] = {m: dict(zip(("mean", "std"), harness.mean_std([row[m] for row in rows])),
                                   n=len(rows)) for m in METRICS} if rows else None
        out[variant] = entry
    return out


def _cell(stat: dict[str, float]) -> str:
    mean = f"{100 * stat['mean']:.1f}"
    return mean if stat["n"] < 2 else f"{mean} ± {100 * stat['std']:.1f}"


def format_markdown(summary: dict[str, dict[str, Any]], head: str) -> str:
    """The results as a Markdown table (in %), last epoch first, best-on-test labelled."""
    lines = [head, "", "| variant | epoch | seeds | mAP (%) | R1 (%) | R5 (%) | R10 (%) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, label in (("last", "last"), ("best_on_test", "best on TEST set (optimistic)")):
        for variant, entry in summary.items():
            if entry[kind] is None:
                continue
            cells = " | ".join(_cell(entry[kind][m]) for m in METRICS)
            lines.append(f"| {VARIANTS[variant].label} | {label} | {len(entry['seeds'])} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | int:
    args, opts = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("ablation: CUDA is not available to torch; pass --device cpu (slow for "
                         "the real configs) or --smoke\n")
        return 2
    if not osp.isfile(args.config):
        sys.stderr.write(f"ablation: no config file '{args.config}'\n")
        return 2
    import torchreid_sdtps

    torchreid_sdtps.load_plugins()
    os.makedirs(args.out, exist_ok=True)
    result = harness.run_study(functools.partial(train_one, args, opts), VARIANTS, args.variants,
                               args.seeds, budget(args, opts), resume=args.resume,
                               runs_file=osp.join(args.out, "runs.jsonl"))
    runs = [{k: v for k, v in r.items() if k not in ("setting", "key")} for r in result.runs]
    summary = summarise(runs)
    head = "\n".join([
        f"Ablation of SDTPS on {runs[0]['target']} ({osp.relpath(args.config, REPO)}"
        f"{', smoke: sdtps_vit_tiny on synthetic data' if args.smoke else ''}), "
        f"{runs[0]['epochs']} epochs, seeds {args.seeds}",
        "", *harness.footer(command_line("ablation.py", argv), result, 1, args.device),
        "- mean ± sample std over the seeds; `last` = the last epoch (what we report); "
        "`best on TEST set` = the epoch with the best test mAP (DeMo's selection, optimistic)"])
    table = format_markdown(summary, head)
    print(table)
    report = {"config": args.config, "seeds": args.seeds, "device": args.device,
              "overrides": list(opts), "smoke": args.smoke, "command": command_line(
                  "ablation.py", argv), "machine": machine(args.device), "date": now(),
              "runs": runs, "summary": summary, "table": table}
    write_json(report, osp.join(args.out, "ablation.json"))
    with atomic_path(osp.join(args.out, "ablation.md")) as tmp, \
            open(tmp, "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    return report


if __name__ == "__main__":
    from torchreid_sdtps.errors import SDTPSError

    try:
        result = main()
    except (SDTPSError, FileNotFoundError) as exc:  # a bad key, value or path: one line
        sys.stderr.write(f"ablation: error: {exc}\n")
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
