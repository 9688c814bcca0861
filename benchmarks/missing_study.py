#!/usr/bin/env python
"""Training for missing modalities: the demo trained without and with it, several seeds each,
ranked on the full missing-modality table.

Each run is the CPU demo (``torchreid_sdtps/configs/synthetic_demo.yaml``: ``sdtps_vit_tiny``,
15 epochs) trained through the package's build path (``build_all`` and the engine's ``run``, what
``tools/train.py`` trains with; ``benchmarks/harness.py``) and ranked with the engine's
missing-modality table (what ``tools/test.py --missing`` prints). Variants (``--variants``):

============  =================================================================================
without       no modality dropout, ``sdtps.mask_missing False`` (the demo before issue 25)
with          ``train.modality_dropout.prob 0.5``, subsets RGB / NI / TI, ``.triplet complete``,
              ``sdtps.mask_missing True``
per_modality  issue 25: ``sdtps.ori_head per_modality`` (an ID and triplet term per modality),
              ``sdtps.mask_missing True``, ``sdtps.missing_match present``
learned       per_modality + the learned stand-in (``sdtps.missing_standin``) and modality
              dropout 0.15 from epoch 5 (``train.modality_dropout.start_epoch``)
partial       without + the partial-match triplet (``sdtps.weight_partial 1``): the triplet on
              every two modalities' normalised guide blocks, the match one missing leaves
============  =================================================================================

plus, from the ``without`` runs (no training), ``without+mask``: the same weights ranked with
``mask_missing`` on, i.e. what masking alone does at evaluation time (the option adds no
weights: it only tells the model to treat an all-zero modality as absent), and
``without+match``: also with the presence-aware match (``missing_match present``, no weights
either).

    python benchmarks/missing_study.py                 # 6 demo runs (~3 min each on 2 quiet cores)
    python benchmarks/missing_study.py --seeds 1 --epochs 4 --work log/missing_quick
    python benchmarks/missing_study.py --smoke --work /tmp/missing_smoke   # seconds (the tests)

Runs live in ``--work`` (default ``log/missing_study``): ``<variant>/seed<n>/`` holds the
checkpoints; every finished run is appended to ``<work>/runs.jsonl`` and reused by a rerun with
the same budget, so an interrupted study resumes where it stopped. The table (mAP, mean ± sample
std over the seeds) is printed as Markdown and written with every number to
``<work>/missing_study.json``.
"""
from __future__ import annotations

import argparse
import functools
import os.path as osp
import statistics
from collections.abc import Sequence
from typing import Any

import harness
from harness import Setting, command_line, machine, now

from torchreid_sdtps import config
from torchreid_sdtps.choices import MISSING_SETTINGS
from torchreid_sdtps.io import write_json

__all__ = ["VARIANTS", "EVAL_ONLY", "SMOKE", "run_variant", "table", "main"]

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: the demo before issue 25 (explicit, so the demo config's own choice does not matter)
_BEFORE = ("sdtps.test_feature", "concat", "sdtps.ori_head", "concat", "sdtps.missing_match",
           "plain", "sdtps.missing_standin", "False", "sdtps.sie_camera", "True",
           "train.modality_dropout.start_epoch", "0")
#: issue 25: per-modality heads, the absence mask and the presence-aware match
_PRESENT = (*_BEFORE, "sdtps.ori_head", "per_modality", "sdtps.mask_missing", "True",
            "sdtps.missing_match", "present")
#: training overrides of each variant (explicit, so the demo config's own choice does not matter)
VARIANTS: dict[str, Setting] = {
    "without": Setting("without", (*_BEFORE, "train.modality_dropout.prob", "0.0",
                                   "sdtps.mask_missing", "False")),
    "with": Setting("with", (*_BEFORE, "train.modality_dropout.prob", "0.5",
                             "train.modality_dropout.subsets", "['RGB', 'NI', 'TI']",
                             "train.modality_dropout.triplet", "complete",
                             "sdtps.mask_missing", "True")),
    "per_modality": Setting("per_modality", (*_PRESENT, "train.modality_dropout.prob", "0.0")),
    "partial": Setting("partial", (*_BEFORE, "train.modality_dropout.prob", "0.0",
                                   "sdtps.mask_missing", "False", "sdtps.weight_partial", "1.0")),
    "learned": Setting("learned", (*_PRESENT, "sdtps.missing_standin", "True",
                                   "train.modality_dropout.prob", "0.15",
                                   "train.modality_dropout.start_epoch", "5",
                                   "train.modality_dropout.subsets", "['RGB', 'NI', 'TI']",
                                   "train.modality_dropout.triplet", "complete")),
}
#: evaluation-only variants: the trained variant whose weights are ranked again, and the model
#: attributes changed for it (options that add no weights)
EVAL_ONLY: dict[str, str] = {"without+mask": "without", "without+match": "without",
                             "without+ori": "without", "learned+ori": "learned",
                             "partial+ori": "partial"}
_EVAL_ATTRS: dict[str, dict[str, Any]] = {
    "without+mask": {"mask_missing": True},
    "without+match": {"mask_missing": True, "missing_match": "present"},
    # the demo's default since issue 25: (b) + (c) ranked with the guide feature ``ori``
    "without+ori": {"mask_missing": True, "missing_match": "present", "test_feature": "ori"},
    "learned+ori": {"test_feature": "ori"},
    "partial+ori": {"mask_missing": True, "missing_match": "present", "test_feature": "ori"}}

#: ``--smoke``: the demo on a tiny synthetic set, 1 epoch (what the tests run)
SMOKE = ["synthetic.height", "64", "synthetic.width", "32", "data.height", "64", "data.width", "32",
         "synthetic.num_train_ids", "6", "synthetic.num_test_ids", "6",
         "synthetic.num_cameras", "2", "synthetic.images_per_camera", "2",
         "train.batch_size", "8", "sampler.num_instances", "2", "train.max_epoch", "1"]


def _missing_table(engine: Any, cfg: Any) -> dict[str, float]:
    """``{setting: mAP}`` of the first target, every setting of ``test.missing_settings``."""
    rows = engine.evaluate_missing(list(cfg.test.missing_settings),
                                   dataset_name=list(cfg.data.targets)[0],
                                   dist_metric=cfg.test.dist_metric,
                                   normalize_feature=cfg.test.normalize_feature,
                                   rerank=cfg.test.rerank)
    return {k: float(v["mAP"]) for k, v in rows.items()}


def run_variant(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Train one seed of a variant and rank its missing-modality table; a variant that others
    re-rank (``EVAL_ONLY``) is ranked again with ``mask_missing`` on. Returns
    ``{"results": {variant: {setting: mAP}}}``."""
    opts = [*(SMOKE if args.smoke else []), *VARIANTS[name].overrides(), "train.seed", str(seed),
            "test.compare_untrained", "False", "test.missing_modalities", "False", "data.save_dir",
            osp.join(args.work, name, f"seed{seed}"), *(["data.root", args.root] if args.root else []),
            *args.opts]
    if args.epochs is not None:
        opts += ["train.max_epoch", str(args.epochs)]
    cfg = config.load_config(opts=opts, demo=True)
    tables: dict[str, dict[str, float]] = {}  # (the engine's own table is off: ranked here)

    def rank(model: Any, engine: Any) -> None:
        tables[name] = _missing_table(engine, cfg)
        for view in (v for v, trained in EVAL_ONLY.items() if trained == name):
            for attr, value in _EVAL_ATTRS[view].items():  # the same weights
                setattr(model, attr, value)
            tables[view] = _missing_table(engine, cfg)

    with harness.quiet():
        harness.train_and_rank(cfg, (), after=rank)
    return {"results": tables}


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
            mean, std = harness.mean_std([100 * r[col] for r in by_seed.values()])
            entry[col] = {"mean": mean, "std": std}
            cells.append(f"{mean:.1f} ± {std:.1f}")
        single = [100 * statistics.fmean(r[c] for c in ("RGB", "NI", "TI"))
                  for r in by_seed.values()]
        mean, std = harness.mean_std(single)
        entry["single_missing_avg"] = {"mean": mean, "std": std}
        summary[name] = entry
        lines.append(f"| {name} | {len(by_seed)} | " + " | ".join(cells)
                     + f" | {mean:.1f} ± {std:.1f} |")
    return "\n".join(lines), summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags of the study (``--smoke``: the first seed only, a tiny data set, 1 epoch)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["without", "with", "without+mask"],
                   choices=[*VARIANTS, *EVAL_ONLY])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=None, help="override train.max_epoch")
    p.add_argument("--work", default="log/missing_study", help="run folder (resumable)")
    p.add_argument("--root", default="", help="data root (default: the demo config's)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each")
    p.add_argument("--smoke", action="store_true",
                   help="tiny synthetic set, 1 epoch, seed 1 (seconds; the tests)")
    p.add_argument("opts", nargs="*", help="extra KEY VALUE overrides for every run")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = args.seeds[:1]
    if args.jobs < 1 or (args.epochs is not None and args.epochs < 1):
        p.error("--jobs and --epochs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train (or read back) every variant and seed, print the table, write the JSON report."""
    args = parse_args(argv)
    harness.start(args)
    args.work = args.work if osp.isabs(args.work) else osp.join(ROOT, args.work)
    trained = list(dict.fromkeys(EVAL_ONLY.get(v, v) for v in args.variants))
    budget = {"study": "missing", "smoke": args.smoke, "epochs": args.epochs, "root": args.root,
              "opts": list(args.opts), "eval_only": EVAL_ONLY}
    result = harness.run_study(functools.partial(run_variant, args), VARIANTS, trained,
                               args.seeds, budget, runs_file=osp.join(args.work, "runs.jsonl"),
                               jobs=args.jobs)
    runs = {name: {r["seed"]: r["results"][name] for r in result.runs
                   if name in r["results"]} for name in args.variants}
    md, summary = table(runs)
    report = {"command": command_line("missing_study.py", argv), "date": now(),
              "machine": machine(), "epochs": args.epochs,
              "runs_now": result.now, "runs_read_back": result.read_back,
              "wall_s": round(result.wall_s, 1), "variants": {
                  **{k: list(v.opts) for k, v in VARIANTS.items()},
                  **{k: {"trained": t, "test": _EVAL_ATTRS[k]} for k, t in EVAL_ONLY.items()}},
              "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()},
              "summary": summary, "table": md}
    write_json(report, osp.join(args.work, "missing_study.json"))
    print(md)
    return report


if __name__ == "__main__":
    main()
