#!/usr/bin/env python
"""SDTPS against no token selection and against an HDM+ATM-style fusion, with enough seeds to
see a difference: same backbone (``sdtps_vit_tiny`` from random init), data, budget and seeds.

Data: ``synthetic_msreid`` with ``cue="localized"`` and ``distractors``: every image shows its
identity in a framed cue region per modality *and* other identities of the same split in
unframed cells of the same size, so that pooling every token mixes identities
(``docs/synthetic.md``, "Distractor identities"). Spec, budget and seeds are fixed below.

Settings (``--settings``, default all):

==============  ===========================================================================
sdtps           the package's model as shipped: SDTPS top-K + its alignment loss
sdtps_block     the same without the alignment loss (``sdtps.weight_align 0``)
no_selection    backbone + guide + ``ori`` head, no token selection (``use_sdtps=False``)
moe_reference   backbone + guide + ``ori`` head + DeMo-style HDM + ATM (``moe_reference.py``)
==============  ===========================================================================

Main feature: ``concat`` (``[ori, fusion]``) for the fusion settings, ``ori`` for
``no_selection``; the fusion settings are also ranked with ``ori`` alone. Per setting the
report gives mAP and Rank-1 as mean ± 95 % t-interval half-width over seeds, the paired
difference to ``no_selection`` (same seed) with its t-interval, the selection recall, the
parameters of the fusion part and the training-step time (minimum over round-robin repeats,
all settings in one process). Seed 0 of every setting also records mAP after every epoch.

    python benchmarks/fusion_study.py --out benchmarks/RESULTS.md    # 64 runs; 47 min, 2 shared cores
    python benchmarks/fusion_study.py --smoke                        # seconds (the tests)

Finished runs are appended to ``--runs-file`` (default ``log/fusion_study_runs.jsonl``); a rerun
with the same budget reuses them, so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import os.path as osp
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import fusion_report
import synthetic_study as st
import torch
from fusion_report import t_interval
from moe_reference import MoEReferenceNet, fusion_parameters
from synthetic_study import Setting
from torch import nn

import torchreid_sdtps
from torchreid_sdtps import build, compat, config, optim
from torchreid_sdtps.data.synthetic import SyntheticSpec, ensure_generated

__all__ = ["SETTINGS", "FUSION_SPEC", "SMOKE_SPEC", "BASELINE", "build_model", "run_one",
           "run_all", "step_times", "t_interval", "paired", "report", "parse_args", "main"]

BEGIN, END = "<!-- fusion_study:begin -->", "<!-- fusion_study:end -->"
BASELINE = "no_selection"
_NO_ALIGN = ("sdtps.weight_align", "0.0", "sdtps.weight_ratio", "0.0")
SETTINGS: dict[str, Setting] = {
    "sdtps": Setting("SDTPS top-K + alignment loss (as shipped)", evals=("concat", "ori")),
    "sdtps_block": Setting("SDTPS top-K, no alignment loss", opts=("sdtps.weight_align", "0.0"),
                           evals=("concat", "ori")),
    "no_selection": Setting("no selection: backbone + guide + ori head", opts=_NO_ALIGN,
                            model_kwargs={"use_sdtps": False}, evals=("ori",)),
    "moe_reference": Setting("HDM + ATM reference (DeMo-style MoE)", opts=_NO_ALIGN,
                             model_kwargs={"use_sdtps": False}, evals=("concat", "ori")),
}
#: settings whose SDTPSNet (built without SDTPS) is wrapped with the HDM + ATM stages
MOE_SETTINGS = frozenset({"moe_reference"})

#: FIXED before the first comparison run, with EPOCHS and SEEDS (docs/synthetic.md, "Distractor
#: identities"): 64x32 images = the 4x2 patch grid of sdtps_vit_tiny; cue 1x2 (one patch row)
#: per modality; 1 distractor identity in 2 unframed cells; the other 4 cells random clutter
FUSION_SPEC = SyntheticSpec(num_train_ids=48, num_test_ids=48, num_cameras=3,
                            images_per_camera=2, height=64, width=32, cue="localized",
                            cue_size=(1, 2), clutter=8, distractors=1)
SMOKE_SPEC = SyntheticSpec(num_train_ids=6, num_test_ids=6, num_cameras=2, images_per_camera=2,
                           height=64, width=32, cue="localized", cue_size=(1, 2), clutter=8,
                           distractors=1)
EPOCHS, SEEDS = 12, 16


def build_model(name: str, factory: Any, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """The network of setting ``name`` (``kwargs``: the config's model kwargs)."""
    net = factory(num_classes=num_classes, **kwargs, **SETTINGS[name].model_kwargs)
    return MoEReferenceNet(net, num_classes) if name in MOE_SETTINGS else net


def _recorder(engine: Any, curve: list[dict[str, float]], losses: dict[int, list[float]]) -> None:
    """Record the ID + triplet loss of every step and, when the engine tests, the mAP."""
    step, test = engine.forward_backward, engine.test

    def forward_backward(data: dict) -> dict[str, float]:
        summary = step(data)
        losses.setdefault(engine.epoch, []).append(summary.get("loss_x", 0.0)
                                                   + summary.get("loss_t", 0.0))
        return summary

    def tested(*args: Any, **kwargs: Any) -> Any:
        out = test(*args, **kwargs)
        res = next(iter(engine.last_results.values()))
        curve.append({"epoch": engine.epoch + 1, "mAP": float(res["mAP"])})
        return out

    engine.forward_backward, engine.test = forward_backward, tested


def _build_all(args: argparse.Namespace, name: str, seed: int, save_dir: str,
               curve: bool = False) -> tuple[Any, nn.Module, Any, Any]:
    """(config, model, engine, data manager) of one run; the model seeded with ``seed``."""
    setting = SETTINGS[name]
    if curve:  # test after every epoch (the engine's tests leave the RNG untouched)
        setting = dataclasses.replace(setting, opts=(*setting.opts, "test.eval_freq", "1"))
    cfg = st.build_config(args, setting, seed, save_dir)
    compat.utils().set_random_seed(seed)
    dm = build.build_datamanager(cfg)
    kwargs = config.model_kwargs(cfg, num_cameras=build.num_camera_labels(dm))
    model = build_model(name, compat.model_factory()[cfg.model.name], dm.num_train_pids, kwargs)
    optimizer = optim.build_optimizer(model, **config.optimizer_kwargs(cfg))
    scheduler = optim.build_lr_scheduler(optimizer, **config.lr_scheduler_kwargs(cfg))
    return cfg, model, build.build_engine(cfg, dm, model, optimizer, scheduler), dm


def run_one(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Train setting ``name`` with ``seed`` and rank it with each of its eval features."""
    start = time.time()
    curve: list[dict[str, float]] = []
    losses: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fusion_study_") as save_dir, st._quiet():
        cfg, model, engine, _ = _build_all(args, name, seed, save_dir, curve=seed == 0)
        _recorder(engine, curve, losses)
        run_kwargs = config.engine_run_kwargs(cfg)
        run_kwargs.pop("test_only")
        engine.run(**run_kwargs)  # trains, then torchreid's final test
        train_s = time.time() - start
        curve = list(curve)  # the tests of the extra eval features below are not epochs
        results = {SETTINGS[name].evals[0]: st._metrics(next(iter(engine.last_results.values())))}
        test_kwargs = {"dist_metric": cfg.test.dist_metric,
                       "normalize_feature": cfg.test.normalize_feature,
                       "ranks": list(cfg.test.ranks)}
        for feature in SETTINGS[name].evals[1:]:
            model.test_feature = feature
            results[feature] = st._metrics(engine.evaluate(**test_kwargs))
        if getattr(engine, "writer", None) is not None:
            engine.writer.close()
    return {"setting": name, "seed": seed, "trained": True, "results": results,
            "curve": curve, "loss": [round(statistics.fmean(v), 4) for _, v in sorted(losses.items())],
            "fusion_params": fusion_parameters(model),
            "params": sum(p.numel() for p in model.parameters()),
            "wall_s": round(time.time() - start, 1), "train_s": round(train_s, 1),
            "fingerprint": fingerprint(args)}


def fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's numbers depend on besides (setting, seed): resumed runs must match it."""
    return {"study": "fusion", **st.fingerprint(args)}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torchreid_sdtps.load_plugins()


def _run_item(item: tuple[argparse.Namespace, str, int]) -> dict[str, Any]:
    return run_one(*item)


def run_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    """Every (setting, seed), seed-major (a cut-short study has every setting for the seeds it
    finished); finished runs read back from ``--runs-file``. Returns runs and wall seconds."""
    start = time.time()
    runs: list[dict[str, Any]] = []
    if args.runs_file and osp.isfile(args.runs_file):
        with open(args.runs_file, encoding="utf-8") as fh:
            stored = [json.loads(line) for line in fh if line.strip()]
        runs = [r for r in stored if r.get("fingerprint") == fingerprint(args)
                and r["setting"] in args.settings and r["seed"] < args.seeds]
        print(f"resuming: {len(runs)} finished runs read from {args.runs_file}", flush=True)
    args.resumed = len(runs)
    done = {(r["setting"], r["seed"]) for r in runs}
    plan = [(name, s) for s in range(args.seeds) for name in args.settings]
    todo = [(args, name, s) for name, s in plan if (name, s) not in done]
    pool = None
    if args.jobs > 1 and len(todo) > 1:
        threads = max(1, (args.threads or torch.get_num_threads()) // args.jobs)
        pool = multiprocessing.get_context("spawn").Pool(args.jobs, _init_worker, (threads,))
        results: Any = pool.imap_unordered(_run_item, todo)
    else:
        results = map(_run_item, todo)
    try:
        for i, r in enumerate(results, len(plan) - len(todo) + 1):
            st._record(args, runs, r, i, len(plan), start, print)
    finally:
        if pool is not None:
            pool.terminate()
    order = {name: i for i, name in enumerate(SETTINGS)}
    return sorted(runs, key=lambda r: (order[r["setting"]], r["seed"])), time.time() - start


def step_times(args: argparse.Namespace, repeats: int = 12) -> dict[str, float]:
    """Minimum seconds of one training step (``engine.forward_backward``: forward, losses,
    backward, optimizer step) per setting on the same batch, the settings interleaved in
    this process so that a busy machine slows them alike."""
    engines = {}
    with tempfile.TemporaryDirectory(prefix="fusion_time_") as save_dir, st._quiet():
        for name in args.settings:
            _, _, engine, dm = _build_all(args, name, 0, save_dir)
            engines[name] = engine
        batch = next(iter(dm.train_loader))
        times: dict[str, list[float]] = {name: [] for name in engines}
        for i in range(repeats + 2):
            for name, engine in engines.items():
                engine.model.train()
                t = time.perf_counter()
                engine.forward_backward(batch)
                if i >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - t)
    return {name: min(v) for name, v in times.items()}


def paired(runs: Sequence[dict[str, Any]], name: str, base: str = BASELINE,
           metric: str = "mAP") -> tuple[float, float, int]:
    """:func:`fusion_report.paired` over this study's settings (default base: no selection)."""
    return fusion_report.paired(runs, SETTINGS, name, base, metric)


def report(args: argparse.Namespace, runs: Sequence[dict[str, Any]], times: dict[str, float],
           wall_s: float, command: str) -> str:
    """The markdown section: command, machine, data, budget, table, paired differences."""
    return fusion_report.render(args, runs, times, wall_s, command)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags of the study (``synthetic_study.py``'s, with this study's settings and budget)."""
    parser = st.study_parser(__doc__.split("\n\n")[0], SETTINGS, default_settings=list(SETTINGS),
                             epochs=EPOCHS, runs_file=os.path.join("log", "fusion_study_runs.jsonl"))
    parser.set_defaults(seeds=SEEDS, root=os.path.join("log", "fusion-data"))
    parser.add_argument("--time-repeats", type=int, default=12,
                        help="round-robin repeats of the training-step timing (0: skip it)")
    args = st.parse_study_args(parser, argv, SETTINGS)
    args.spec = SMOKE_SPEC if args.smoke else FUSION_SPEC
    args.catalog, args.baseline = SETTINGS, BASELINE
    if args.smoke:
        args.time_repeats = min(args.time_repeats, 2)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the study, time the steps, print the report, optionally write ``--out``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torchreid_sdtps.load_plugins()
    command = st.command_line("fusion_study.py", argv)
    ensure_generated(args.root, args.spec, progress=False)
    runs, wall_s = run_all(args)
    if args.time_repeats:
        torch.set_num_threads(1)  # as each run's worker
        times = step_times(args, args.time_repeats)
    else:
        times = {}
    text = report(args, runs, times, wall_s, command)
    st.publish(args, text, BEGIN, END)
    return {"runs": runs, "times": times, "wall_s": wall_s, "report": text}


if __name__ == "__main__":
    main()
