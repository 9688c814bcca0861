#!/usr/bin/env python
"""Ablation study on ``synthetic_msreid``: does the tri-modal SDTPS model beat every single
modality, does SDTPS beat the model without it, and which selection works best?

Every setting trains ``sdtps_vit_tiny`` from scratch (random init) with the project's own builders
(``torchreid_sdtps.build``: ImageDataManager, model factory, optimizer, warm-up cosine
schedule, ``ImageSDTPSEngine``), the same budget (epochs, batch, lr) and the same seeds, then
ranks the test split with torchreid's evaluator.

Settings (``--settings``, default all):

=============  ============================================================================
sdtps_topk     SDTPS with hard top-K (the default model). The *same* trained runs are ranked
               three ways: ``test_feature=concat`` (default), ``sdtps`` and ``ori``.
no_sdtps       backbone + guide + ``ori`` BNNeck only (``use_sdtps=False``); no alignment loss
               (there are no SDTPS tokens to align), otherwise identical.
sdtps_noalign  (not in the default list) SDTPS top-K without the alignment loss: separates the
               effect of the SDTPS tokens from that of their auxiliary loss.
gumbel_0.1     Gumbel top-K selection in training, ``gumbel_noise=0.1`` (the default sigma_g).
gumbel_0.5     the same with ``gumbel_noise=0.5`` (``gumbel_tau`` stays at its default 0.1).
rgb_only       SDTPS top-K with NI and TI zeroed (the normalised input set to 0) in training
ni_only        *and* test by a wrapper module; likewise NI only and TI only. Ranked with the
ti_only        kept modality's own feature blocks (main row) and with all blocks (see
               :class:`ZeroModalities`: the SIE camera embedding leaks into zeroed branches).
=============  ============================================================================

Two reference rows need no training: the untrained model (random init, chance level) and
``attribute_oracle`` (a perfect reader of each modality's attribute: the ceiling of a single
modality by construction of the data set).

    python benchmarks/synthetic_study.py                      # the full study (~30 min, 2 cores)
    python benchmarks/synthetic_study.py --runs-file log/study_runs.jsonl   # resumable
    python benchmarks/synthetic_study.py --settings sdtps_topk,no_sdtps --seeds 1 --epochs 4
    python benchmarks/synthetic_study.py --smoke              # seconds: tiny data, 1 epoch

``--out FILE`` writes the markdown report between the markers ``<!-- synthetic_study:begin -->``
and ``<!-- synthetic_study:end -->`` of FILE (the rest of FILE is kept; atomic replace).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import multiprocessing
import os
import os.path as osp
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from _common import command_line, machine, now
from _common import write_section as _write_section
from synthetic_analysis import attribute_oracle  # benchmarks/ is on sys.path (script folder)
from torch import nn

import torchreid_sdtps
from torchreid_sdtps import build, compat, config, optim
from torchreid_sdtps.data.synthetic import SyntheticSpec, ensure_generated

__all__ = ["SETTINGS", "DEFAULT_SETTINGS", "STUDY_SPEC", "SMOKE_SPEC", "Setting", "ZeroModalities",
           "run_one", "run_study", "summarise", "report", "write_section", "study_parser",
           "parse_study_args", "parse_args", "start_study", "publish", "main"]

logger = logging.getLogger("synthetic_study")

MODALITIES = ("RGB", "NI", "TI")
BEGIN, END = "<!-- synthetic_study:begin -->", "<!-- synthetic_study:end -->"


class ZeroModalities(nn.Module):
    """Wrap a multi-modal model and zero the given modalities of its input ``(B, M, 3, H, W)``
    in training *and* evaluation: a single-modality model with the same architecture and budget
    (zero = the normalised mean pixel, as in the engine's missing-modality table).

    With ``kept_feature=True`` the eval feature keeps only the dimensions of the modalities that
    are not zeroed (their ``ori`` and ``sdtps`` blocks of ``concat = [ori, sdtps]``, each
    ``cat_m`` of C-wide blocks). Why: a zeroed modality is *not* constant at the backbone
    output when the SIE camera embedding is on (``tokens + sie_coe * sie_embed[cam]``), so its
    feature blocks carry a pure camera signal that pulls same-camera images together.
    """

    def __init__(self, model: nn.Module, zeroed: Sequence[int], kept_feature: bool = False) -> None:
        super().__init__()
        self.model = model
        self.zeroed = tuple(int(i) for i in zeroed)
        self.kept_feature = kept_feature

    def _kept_dims(self, dim: int) -> list[int]:
        m = self.model.num_modalities
        blocks = dim // self.model.backbone.out_dim  # M (ori or sdtps alone) or 2M (concat)
        c = dim // blocks
        return [b * c + i for b in range(blocks) if b % m not in self.zeroed for i in range(c)]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        x = x.clone()
        x[:, list(self.zeroed)] = 0
        out = self.model(x, *args, **kwargs)
        if self.training or not self.kept_feature or not isinstance(out, torch.Tensor):
            return out
        return out[:, self._kept_dims(out.shape[1])]


@dataclass(frozen=True)
class Setting:
    """One trained configuration: config overrides, extra model kwargs, zeroed modalities and
    the eval features its runs are ranked with (the first is the setting's main row)."""

    label: str
    opts: tuple[str, ...] = ()
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    zeroed: tuple[int, ...] = ()
    evals: tuple[str, ...] = ("concat",)


SETTINGS: dict[str, Setting] = {
    "sdtps_topk": Setting("SDTPS top-K (RGB+NI+TI)", evals=("concat", "sdtps", "ori")),
    "no_sdtps": Setting("no SDTPS: guide + ori head (RGB+NI+TI)",
                        opts=("sdtps.weight_align", "0.0", "sdtps.weight_ratio", "0.0"),
                        model_kwargs={"use_sdtps": False}, evals=("ori",)),
    "sdtps_noalign": Setting("SDTPS top-K, no alignment loss", opts=("sdtps.weight_align", "0.0")),
    "gumbel_0.1": Setting("SDTPS Gumbel, noise 0.1", opts=("sdtps.selection", "gumbel",
                                                           "sdtps.gumbel_noise", "0.1")),
    "gumbel_0.5": Setting("SDTPS Gumbel, noise 0.5", opts=("sdtps.selection", "gumbel",
                                                           "sdtps.gumbel_noise", "0.5")),
    "rgb_only": Setting("SDTPS top-K, RGB only", zeroed=(1, 2), evals=("kept", "concat")),
    "ni_only": Setting("SDTPS top-K, NI only", zeroed=(0, 2), evals=("kept", "concat")),
    "ti_only": Setting("SDTPS top-K, TI only", zeroed=(0, 1), evals=("kept", "concat")),
}
DEFAULT_SETTINGS = ("sdtps_topk", "no_sdtps", "gumbel_0.1", "gumbel_0.5", "rgb_only", "ni_only",
                    "ti_only")

#: the study's data set: smaller than the demo's (fewer ids, 96x48 images: 6x3 = 18 patches,
#: K = 9, N_c = 4) so that 21 runs fit ~30 min on 2 CPU cores
STUDY_SPEC = SyntheticSpec(num_train_ids=40, num_test_ids=30, num_cameras=3, images_per_camera=3,
                           height=96, width=48)
#: ``--smoke``: a few seconds per run
SMOKE_SPEC = SyntheticSpec(num_train_ids=6, num_test_ids=6, num_cameras=2, images_per_camera=2,
                           height=64, width=32)


def study_spec(args: argparse.Namespace) -> SyntheticSpec:
    """The data of this invocation: ``args.spec`` when a caller set one, else the study's."""
    return getattr(args, "spec", None) or (SMOKE_SPEC if args.smoke else STUDY_SPEC)


def catalog(args: argparse.Namespace) -> Mapping[str, Setting]:
    """The settings table of this invocation: ``args.catalog`` when a caller set one."""
    return getattr(args, "catalog", None) or SETTINGS


def _spec_opts(spec: SyntheticSpec) -> list[str]:
    out: list[str] = []
    for key, value in spec.to_dict().items():
        out += [f"synthetic.{key}", str(value)]
    return out + ["data.height", str(spec.height), "data.width", str(spec.width)]


def build_config(args: argparse.Namespace, setting: Setting, seed: int, save_dir: str) -> Any:
    """The demo config with the study's data, budget, seed and the setting's overrides."""
    opts = _spec_opts(study_spec(args)) + [
        "data.root", args.root, "data.save_dir", save_dir, "use_gpu", "False",
        "train.max_epoch", str(args.epochs), "train.batch_size", str(args.batch),
        "train.seed", str(seed), "train.print_freq", "1000", "test.eval_freq", "-1",
        "test.ranks", "[1, 5, 10]", "test.compare_untrained", "False",
        "sampler.num_instances", str(args.num_instances),
        *setting.opts,
    ]
    return config.load_config(opts=opts, demo=True)


def _quiet() -> contextlib.AbstractContextManager:
    """Send torchreid's prints (per-epoch lines, test banners) to a buffer."""
    return contextlib.redirect_stdout(io.StringIO())


def _metrics(res: dict[str, Any]) -> dict[str, float]:
    """mAP, R1 and, when the engine measured token selection, its mean recall / precision."""
    out = {"mAP": float(res["mAP"]), "R1": float(res["R1"])}
    if res.get("selection"):
        out.update(recall=float(res["selection"]["recall_mean"]),
                   precision=float(res["selection"]["precision_mean"]),
                   chance_recall=float(res["selection"]["keep_ratio"]))
    return out


def run_one(args: argparse.Namespace, name: str, seed: int, trained: bool = True) -> dict[str, Any]:
    """Train setting ``name`` with ``seed`` (or only build it, ``trained=False``) and rank it
    with each of its eval features; returns ``{"setting", "seed", "results": {feature: ...}}``."""
    setting = catalog(args)[name]
    with tempfile.TemporaryDirectory(prefix="sdtps_study_") as save_dir:
        cfg = build_config(args, setting, seed, save_dir)
        start = time.time()
        with _quiet():
            compat.utils().set_random_seed(seed)
            dm = build.build_datamanager(cfg)
            factory = compat.model_factory()[cfg.model.name]
            kwargs = dict(config.model_kwargs(cfg, num_cameras=build.num_camera_labels(dm)),
                          **setting.model_kwargs)
            net = factory(num_classes=dm.num_train_pids, **kwargs)
            model: nn.Module = ZeroModalities(net, setting.zeroed) if setting.zeroed else net
            optimizer = optim.build_optimizer(model, **config.optimizer_kwargs(cfg))
            scheduler = optim.build_lr_scheduler(optimizer, **config.lr_scheduler_kwargs(cfg))
            engine = build.build_engine(cfg, dm, model, optimizer, scheduler)
            if trained:
                run_kwargs = config.engine_run_kwargs(cfg)
                run_kwargs.pop("test_only")
                engine.run(**run_kwargs)  # trains, then torchreid's final test
            train_s = time.time() - start
            results = {}
            test_kwargs = {"dist_metric": cfg.test.dist_metric,
                           "normalize_feature": cfg.test.normalize_feature,
                           "ranks": list(cfg.test.ranks)}
            # engine.run's final test already ranked the feature the model was trained with
            trained_with = net.test_feature
            final = dict(getattr(engine, "last_results", None) or {}) if trained else {}
            for feature in setting.evals:
                if feature == trained_with and final:
                    results[feature] = _metrics(next(iter(final.values())))
                    continue
                # the eval feature is chosen at run time; "kept": concat of the kept modalities
                net.test_feature = "concat" if feature == "kept" else feature
                if isinstance(model, ZeroModalities):
                    model.kept_feature = feature == "kept"
                results[feature] = _metrics(engine.evaluate(**test_kwargs))
            if getattr(engine, "writer", None) is not None:  # before its folder is removed
                engine.writer.close()
    return {"setting": name, "seed": seed, "trained": trained, "results": results,
            "wall_s": round(time.time() - start, 1), "train_s": round(train_s, 1),
            "fingerprint": fingerprint(args)}


def fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's numbers depend on besides (setting, seed): resumed runs must match it."""
    return {"epochs": args.epochs, "batch": args.batch, "num_instances": args.num_instances,
            "spec": study_spec(args).to_dict()}


def _row_label(name: str, feature: str, settings: Mapping[str, Setting] = SETTINGS) -> str:
    setting = settings[name]
    if len(setting.evals) == 1:
        return setting.label
    if feature == "kept":
        return f"{setting.label}, its own feature blocks (concat of the kept modality)"
    if setting.zeroed:
        return f"{setting.label}, all blocks (zeroed branches' SIE camera signal included)"
    return f"{setting.label}, test_feature={feature}"


def summarise(runs: Sequence[dict[str, Any]], settings: Mapping[str, Setting] = SETTINGS
              ) -> dict[str, dict[str, Any]]:
    """Mean and (sample) std over seeds of every (setting, eval feature) row, in run order
    (mAP, R1 and the selection metrics where every run of the row has them)."""
    groups: dict[str, list[dict[str, float]]] = {}
    keys: dict[str, tuple[str, str, bool]] = {}
    for r in runs:
        for feature, res in r["results"].items():
            label = _row_label(r["setting"], feature, settings) if r["trained"] else (
                f"untrained (random init), test_feature={feature}")
            groups.setdefault(label, []).append(res)
            keys[label] = (r["setting"], feature, r["trained"])
    out = {}
    for label, rows in groups.items():
        stats: dict[str, Any] = {"n": len(rows), "setting": keys[label][0], "feature": keys[label][1],
                                 "trained": keys[label][2]}
        for metric in ("mAP", "R1", "recall", "precision", "chance_recall"):
            if not all(metric in row for row in rows):
                continue
            values = [100 * row[metric] for row in rows]
            stats[metric] = statistics.fmean(values)
            stats[metric + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            stats[metric + "_all"] = values
        out[label] = stats
    return out


def _fmt(stats: dict[str, Any], metric: str) -> str:
    return f"{stats[metric]:5.1f} ± {stats[metric + '_std']:4.1f}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown table: setting, seeds, mAP and Rank-1 as mean ± std (%)."""
    lines = ["| setting | seeds | mAP (%) | Rank-1 (%) |", "| --- | --- | --- | --- |"]
    for label, s in summary.items():
        lines.append(f"| {label} | {s['n']} | {_fmt(s, 'mAP')} | {_fmt(s, 'R1')} |")
    return "\n".join(lines)


def _find(summary: dict[str, dict[str, Any]], setting: str, feature: str | None = None
          ) -> dict[str, Any] | None:
    for s in summary.values():
        if s["trained"] and s["setting"] == setting and (feature is None or s["feature"] == feature):
            return s
    return None


def _compare(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """One verdict line: mean difference and whether it exceeds the seeds' spread."""
    diff = a["mAP"] - b["mAP"]
    spread = max(a["mAP_std"], b["mAP_std"])
    if diff > spread:
        verdict = "YES"
    elif diff > 0:
        verdict = "only within the seed spread (not a clear win)"
    else:
        verdict = "NO"
    if min(a["n"], b["n"]) < 2:
        verdict += " (single seed: no spread estimate)"
    return (f"{name_a} vs {name_b}: mAP {a['mAP']:.1f} vs {b['mAP']:.1f} "
            f"(diff {diff:+.1f}, larger std {spread:.1f}) -> better: {verdict}")


def verdicts(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The two questions of the study, answered from the numbers (mAP, mean over seeds)."""
    lines = []
    tri = _find(summary, "sdtps_topk", "concat")
    if tri is not None:
        for single in ("rgb_only", "ni_only", "ti_only"):
            s = _find(summary, single)
            if s is not None:
                lines.append(_compare(tri, s, "tri-modal SDTPS (concat)", SETTINGS[single].label))
        base = _find(summary, "no_sdtps")
        if base is not None:
            lines.append(_compare(tri, base, "SDTPS (concat)", "no SDTPS (ori)"))
            sd = _find(summary, "sdtps_topk", "sdtps")
            if sd is not None:
                lines.append(_compare(sd, base, "SDTPS feature alone", "no SDTPS (ori)"))
            ori = _find(summary, "sdtps_topk", "ori")
            if ori is not None:
                lines.append(_compare(ori, base, "ori feature of the SDTPS-trained model",
                                      "no SDTPS (ori)"))
        for g in ("gumbel_0.1", "gumbel_0.5"):
            s = _find(summary, g)
            if s is not None:
                lines.append(_compare(s, tri, SETTINGS[g].label, "top-K"))
    return lines


def report(args: argparse.Namespace, runs: Sequence[dict[str, Any]], oracle: dict[str, Any],
           wall_s: float, command: str) -> str:
    """The markdown section: command, machine, data, table, verdicts, reference rows."""
    spec = study_spec(args)
    summary = summarise(runs)
    train_times = [r["train_s"] for r in runs if r["trained"]]
    lines = [
        "### Synthetic ablation study (`benchmarks/synthetic_study.py`)",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- date: {now()}; this invocation "
        f"{wall_s / 60:.1f} min wall with {args.jobs} parallel job(s) "
        f"({len(runs) - getattr(args, 'resumed', 0)} runs; {getattr(args, 'resumed', 0)} more "
        f"read back from `--runs-file`); {len(train_times)} trained runs, "
        f"{sum(r['wall_s'] for r in runs) / 60:.1f} min summed over all runs, median "
        f"{statistics.median(train_times) if train_times else 0:.0f} s per trained run",
        f"- data: `synthetic_msreid` {spec.num_train_ids} train / {spec.num_test_ids} test ids, "
        f"{spec.num_cameras} cameras x {spec.images_per_camera} images, {spec.height}x{spec.width}, "
        f"{spec.values_per_modality} attribute values per modality, data seed {spec.seed} "
        "(the same data for every run)",
        f"- model / budget: `sdtps_vit_tiny` from random init, {args.epochs} epochs, batch "
        f"{args.batch} ({args.num_instances} images per id), Adam lr 1e-3, warm-up cosine, "
        f"seeds {list(range(args.seeds))} (seed = `train.seed`: init, sampling, augmentation)",
        "- the `sdtps_topk` runs are trained once and ranked with `test_feature=concat`, `sdtps` "
        "and `ori`; the single-modality runs with the kept modality's own `ori`+`sdtps` blocks "
        "(main row) and with all blocks; every other setting with its default feature",
        "",
        table(summary),
        "",
        "Reference (no training): `attribute_oracle`, a perfect reader of each modality's "
        "attribute (ties broken at random) — the ceiling by construction of the data set:",
        "",
        "| modalities | oracle mAP (%) | oracle Rank-1 (%) | test ids sharing the value |",
        "| --- | --- | --- | --- |",
    ]
    for combo in ("RGB", "NI", "TI", "RGB+NI+TI"):
        o = oracle[combo]
        lines.append(f"| {combo} | {100 * o['mAP']:.1f} | {100 * o['rank1']:.1f} | "
                     f"{o['ids_per_value']:.1f} |")
    lines += ["", "Verdicts (mean mAP over seeds; 'YES' only when the difference exceeds the "
                  "larger of the two standard deviations):", ""]
    lines += [f"- {v}" for v in verdicts(summary)]
    per_run = [{k: r[k] for k in ("setting", "seed", "trained", "train_s")} | {
        "results": {f: {m: round(100 * v, 2) for m, v in res.items()} for f, res in r["results"].items()}}
        for r in runs]
    lines += ["", "<details><summary>per-run numbers (JSON)</summary>", "", "```json",
              json.dumps(per_run, indent=None)[:20000], "```", "", "</details>"]
    return "\n".join(lines)


def write_section(path: str, body: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace this script's marked section of ``path`` (appended if absent), atomically."""
    _write_section(path, body, begin, end)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torchreid_sdtps.load_plugins()


def _run_item(item: tuple[argparse.Namespace, str, int, bool]) -> dict[str, Any]:
    args, name, seed, trained = item
    return run_one(args, name, seed, trained=trained)


def sort_runs(runs: Sequence[dict[str, Any]], settings: Mapping[str, Setting] = SETTINGS
              ) -> list[dict[str, Any]]:
    """Untrained reference first, then the settings in ``settings`` order, then seeds."""
    order = {name: i for i, name in enumerate(settings)}
    return sorted(runs, key=lambda r: (r["trained"], order[r["setting"]], r["seed"]))


def run_study(args: argparse.Namespace, progress: Callable[..., None] = print
              ) -> tuple[list[dict[str, Any]], float]:
    """All (setting, seed) runs, seed-major so that a cut-short study has every setting; plus
    the untrained reference; ``args.jobs`` worker processes. Returns the runs (sorted) and the
    wall time in seconds."""
    start = time.time()
    runs: list[dict[str, Any]] = []
    done: set[tuple[str, int, bool]] = set()
    if args.runs_file and osp.isfile(args.runs_file):  # --resume: reuse finished runs
        with open(args.runs_file, encoding="utf-8") as fh:
            stored = [json.loads(line) for line in fh if line.strip()]
        wanted = {name for name in args.settings} | {"sdtps_topk"}
        runs = [r for r in stored if r.get("fingerprint") == fingerprint(args)
                and r["setting"] in wanted and r["seed"] < args.seeds]
        done = {(r["setting"], r["seed"], r["trained"]) for r in runs}
        args.resumed = len(runs)
        progress(f"resuming: {len(runs)} finished runs read from {args.runs_file}"
                 + (f" ({len(stored) - len(runs)} others of other settings, seeds or budget "
                    "ignored)" if len(stored) > len(runs) else ""))
    plan = [("sdtps_topk", s, False) for s in range(args.seeds)]
    plan += [(name, s, True) for s in range(args.seeds) for name in args.settings]
    todo = [(args, name, seed, trained) for name, seed, trained in plan if (name, seed, trained) not in done]
    if args.jobs > 1 and len(todo) > 1:
        threads = max(1, (args.threads or torch.get_num_threads()) // args.jobs)
        pool = multiprocessing.get_context("spawn").Pool(args.jobs, _init_worker, (threads,))
        results: Any = pool.imap_unordered(_run_item, todo)
    else:
        pool, results = None, map(_run_item, todo)
    try:
        for i, r in enumerate(results, len(plan) - len(todo) + 1):
            _record(args, runs, r, i, len(plan), start, progress)
    finally:
        if pool is not None:
            pool.terminate()
    return sort_runs(runs, catalog(args)), time.time() - start


def _record(args: argparse.Namespace, runs: list[dict[str, Any]], r: dict[str, Any], i: int,
            total: int, start: float, progress: Callable[..., None]) -> None:
    """Keep a finished run, append it to ``--runs-file`` and print one progress line."""
    runs.append(r)
    if args.runs_file:
        os.makedirs(osp.dirname(osp.abspath(args.runs_file)), exist_ok=True)
        with open(args.runs_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(r) + "\n")
    res = "  ".join(f"{f}: mAP {100 * v['mAP']:.1f} R1 {100 * v['R1']:.1f}"
                    + (f" recall {100 * v['recall']:.1f}" if "recall" in v else "")
                    for f, v in r["results"].items())
    progress(f"[{i}/{total}] {r['setting']:<12} seed {r['seed']} "
             f"{'trained' if r['trained'] else 'untrained'} {r['wall_s']:6.1f}s  {res}  "
             f"(elapsed {(time.time() - start) / 60:.1f} min)", flush=True)


def study_parser(description: str, catalog: Mapping[str, Setting] = SETTINGS, *,
                 default_settings: Sequence[str] = DEFAULT_SETTINGS, epochs: int = 20,
                 runs_file: str = "") -> argparse.ArgumentParser:
    """The flags of a study on this runner; ``catalog`` names the settings it can run, the
    keyword arguments are the defaults in which the studies differ."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per setting")
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs per run")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--num-instances", type=int, default=4, help="images per id in a batch")
    parser.add_argument("--settings", default=",".join(default_settings),
                        help=f"comma-separated subset of {list(catalog)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in all (0 = torch's default), split between the jobs")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs in parallel, each in its own process (2 x 1 thread uses 2 "
                             "cores better than 1 x 2 threads for this small model)")
    parser.add_argument("--root", default="reid-data", help="data root (the data set is generated there)")
    parser.add_argument("--out", default="", help="markdown file whose study section is (re)written")
    parser.add_argument("--runs-file", default=runs_file,
                        help="JSON-lines file: every finished run is appended; runs of the same "
                             "budget found there are reused, so an interrupted study resumes "
                             "('' = none)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data, 1 epoch, 1 seed: seconds (for the tests)")
    return parser


def parse_study_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                     catalog: Mapping[str, Setting] = SETTINGS) -> argparse.Namespace:
    """Parse ``argv`` with a :func:`study_parser`, check the settings against ``catalog`` and
    the counts, and shrink the budget for ``--smoke``."""
    args = parser.parse_args(argv)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in catalog]
    if unknown or not args.settings:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(catalog)}")
    if args.smoke:
        args.epochs, args.batch, args.num_instances, args.jobs = 1, 8, 2, 1
        args.seeds = min(args.seeds, 1)
    if args.seeds < 1 or args.epochs < 1 or args.jobs < 1:
        parser.error("--seeds, --epochs and --jobs must be >= 1")
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags of this study."""
    return parse_study_args(study_parser(__doc__.split("\n\n")[0]), argv)


def start_study(args: argparse.Namespace, script: str, argv: Sequence[str] | None
                ) -> tuple[str, list[dict[str, Any]], float]:
    """What a study's ``main`` does before its report: threads, logging, plugins, the data
    (generated once, before any worker starts) and the runs. Returns the command line as
    typed, the runs and the wall time in seconds."""
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torchreid_sdtps.load_plugins()
    command = command_line(script, argv)
    ensure_generated(args.root, study_spec(args), progress=False)
    runs, wall_s = run_study(args)
    return command, runs, wall_s


def publish(args: argparse.Namespace, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Print a study's report and (re)write its marked section of ``--out``."""
    print(text)
    if args.out:
        write_section(args.out, text, begin, end)
        print(f"\nwritten: {args.out}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study, print the table and verdicts, optionally write ``--out``."""
    args = parse_args(argv)
    command, runs, wall_s = start_study(args, "synthetic_study.py", argv)
    text = report(args, runs, attribute_oracle(study_spec(args)), wall_s, command)
    publish(args, text)
    return {"runs": runs, "summary": summarise(runs), "wall_s": wall_s, "report": text}


if __name__ == "__main__":
    main()
