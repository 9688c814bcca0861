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
import functools
import json
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import harness
import torch
from harness import Setting as _Setting
from harness import command_line, machine, now  # noqa: F401  (fusion_study/report read them here)
from synthetic_analysis import attribute_oracle  # benchmarks/ is on sys.path (script folder)
from torch import nn

from torchreid_sdtps import compat, config
from torchreid_sdtps.data.synthetic import SyntheticSpec, ensure_generated
from torchreid_sdtps.models import net as _net

__all__ = ["SETTINGS", "DEFAULT_SETTINGS", "STUDY_SPEC", "SMOKE_SPEC", "Setting", "ZeroModalities",
           "register_models", "run_one", "run_study", "summarise", "report", "write_section",
           "study_parser", "parse_study_args", "parse_args", "start_study", "publish", "main"]

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
    ``test_feature = "kept"`` is ``concat`` of the kept modalities' blocks; any other value is
    the wrapped model's own.
    """

    def __init__(self, model: nn.Module, zeroed: Sequence[int], kept_feature: bool = False) -> None:
        super().__init__()
        self.model = model
        self.zeroed = tuple(int(i) for i in zeroed)
        self.kept_feature = kept_feature

    @property
    def test_feature(self) -> str:
        return "kept" if self.kept_feature else self.model.test_feature

    @test_feature.setter
    def test_feature(self, value: str) -> None:
        self.kept_feature = value == "kept"
        self.model.test_feature = "concat" if self.kept_feature else value

    @property
    def num_modalities(self) -> int:
        return self.model.num_modalities

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


def zero_modalities_factory(base: Callable[..., nn.Module], zeroed: Sequence[int]
                            ) -> Callable[..., nn.Module]:
    """A model factory: ``base``'s model wrapped in :class:`ZeroModalities` (``zeroed``)."""
    def factory(num_classes: int, options: Any = None, **kwargs: Any) -> nn.Module:
        return ZeroModalities(base(num_classes, options=options, **kwargs), zeroed)

    return factory


#: study-only models (registered by :func:`register_models`): ``sdtps_vit_tiny`` with all
#: modalities but one zeroed in training and evaluation
ZERO_MODELS = {f"sdtps_vit_tiny_{m.lower()}_only": zero_modalities_factory(
    _net.sdtps_vit_tiny, tuple(j for j in range(len(MODALITIES)) if j != i))
    for i, m in enumerate(MODALITIES)}


def register_models() -> None:
    """Register the study's models by name (idempotent; also run in every worker)."""
    for name, factory in ZERO_MODELS.items():
        compat.register_model(name, factory)


@dataclass(frozen=True)
class Setting(_Setting):
    """:class:`harness.Setting`; ``model_kwargs`` only for ``fusion_study.py``, which passes
    extra model arguments until it trains through the harness (helper ``head`` moves it)."""

    model_kwargs: dict[str, Any] = field(default_factory=dict)


_NO_SDTPS = ("sdtps.use_sdtps", "False", "sdtps.weight_align", "0.0", "sdtps.weight_ratio", "0.0")
_SINGLE = ("kept", "concat")
SETTINGS: dict[str, Setting] = {
    "untrained": Setting("untrained (random init)", evals=("concat", "sdtps", "ori"), train=False),
    "sdtps_topk": Setting("SDTPS top-K (RGB+NI+TI)", evals=("concat", "sdtps", "ori")),
    "no_sdtps": Setting("no SDTPS: guide + ori head (RGB+NI+TI)", opts=_NO_SDTPS, evals=("ori",)),
    "sdtps_noalign": Setting("SDTPS top-K, no alignment loss", opts=("sdtps.weight_align", "0.0")),
    "gumbel_0.1": Setting("SDTPS Gumbel, noise 0.1", opts=("sdtps.selection", "gumbel",
                                                           "sdtps.gumbel_noise", "0.1")),
    "gumbel_0.5": Setting("SDTPS Gumbel, noise 0.5", opts=("sdtps.selection", "gumbel",
                                                           "sdtps.gumbel_noise", "0.5")),
    "rgb_only": Setting("SDTPS top-K, RGB only", model="sdtps_vit_tiny_rgb_only", evals=_SINGLE),
    "ni_only": Setting("SDTPS top-K, NI only", model="sdtps_vit_tiny_ni_only", evals=_SINGLE),
    "ti_only": Setting("SDTPS top-K, TI only", model="sdtps_vit_tiny_ti_only", evals=_SINGLE),
}
#: the reference that every invocation ranks beside its settings (no training)
REFERENCE = "untrained"
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


def build_config(args: argparse.Namespace, setting: Setting, seed: int, save_dir: str) -> Any:
    """The demo config with the study's data, budget, seed and the setting's overrides."""
    opts = harness.spec_overrides(study_spec(args)) + [
        "data.root", args.root, "data.save_dir", save_dir, "use_gpu", "False",
        "train.max_epoch", str(args.epochs), "train.batch_size", str(args.batch),
        "train.seed", str(seed), "train.print_freq", "1000", "test.eval_freq", "-1",
        "test.ranks", "[1, 5, 10]", "test.compare_untrained", "False",
        "sampler.num_instances", str(args.num_instances),
        *setting.opts, *(("model.name", setting.model) if getattr(setting, "model", None) else ()),
    ]
    return config.load_config(opts=opts, demo=True)


def run_one(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Train setting ``name`` with ``seed`` through ``build_all`` (a reference setting: only
    build it) and rank it with each of its eval features."""
    setting = catalog(args)[name]
    with harness.save_dir() as save_dir, harness.quiet():
        cfg = build_config(args, setting, seed, save_dir)
        done = harness.train_and_rank(cfg, setting.evals, train=setting.train)
    return {"trained": setting.train, "results": done.results, "train_s": round(done.train_s, 1)}


def fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """Data and budget of the runs (``fusion_study.py`` keys its runs with it too)."""
    return {"epochs": args.epochs, "batch": args.batch, "num_instances": args.num_instances,
            "spec": study_spec(args).to_dict()}


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's numbers depend on besides its setting and seed: resumed runs must match."""
    return {"study": "synthetic", **fingerprint(args)}


def _row_label(name: str, feature: str, settings: Mapping[str, Setting] = SETTINGS) -> str:
    setting = settings[name]
    if len(setting.evals) == 1:
        return setting.label
    if feature == "kept":
        return f"{setting.label}, its own feature blocks (concat of the kept modality)"
    if "kept" in setting.evals:
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
            stats[metric], stats[metric + "_std"] = harness.mean_std(values)
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


def report(args: argparse.Namespace, result: harness.Runs, oracle: dict[str, Any],
           command: str) -> str:
    """The markdown section: command, machine, data, table, verdicts, reference rows."""
    spec, runs = study_spec(args), result.runs
    summary = summarise(runs)
    train_times = [r["train_s"] for r in runs if r["trained"]]
    lines = [
        "### Synthetic ablation study (`benchmarks/synthetic_study.py`)",
        "",
        *harness.footer(command, result, args.jobs),
        f"- {len(train_times)} trained runs, {sum(r['wall_s'] for r in runs) / 60:.1f} min summed "
        f"over all runs, median {statistics.median(train_times) if train_times else 0:.0f} s per "
        "trained run",
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
    harness.write_section(path, body, begin, end)


def run_study(args: argparse.Namespace, progress: Callable[..., None] = print) -> harness.Runs:
    """Every (setting, seed) of ``args`` plus the untrained reference, on the harness (pool,
    resume from ``--runs-file``)."""
    names = [REFERENCE, *args.settings] if REFERENCE in catalog(args) else list(args.settings)
    return harness.run_study(functools.partial(run_one, args), catalog(args), names,
                             range(args.seeds), budget(args), runs_file=args.runs_file,
                             jobs=args.jobs, threads=args.threads, setup=register_models,
                             progress=progress)


def study_parser(description: str, catalog: Mapping[str, Setting] = SETTINGS, *,
                 default_settings: Sequence[str] = DEFAULT_SETTINGS, epochs: int = 20,
                 runs_file: str = "") -> argparse.ArgumentParser:
    """The harness's study flags (:func:`harness.study_parser`)."""
    return harness.study_parser(description, catalog, default_settings=default_settings,
                                epochs=epochs, runs_file=runs_file)


def parse_study_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                     catalog: Mapping[str, Setting] = SETTINGS) -> argparse.Namespace:
    """:func:`harness.parse_study_args` (the reference setting is not a choice)."""
    return harness.parse_study_args(parser, argv, {k: v for k, v in catalog.items()
                                                   if k != REFERENCE})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags of this study."""
    return parse_study_args(study_parser(__doc__.split("\n\n")[0]), argv)


def start_study(args: argparse.Namespace, script: str, argv: Sequence[str] | None
                ) -> tuple[str, harness.Runs]:
    """What a study's ``main`` does before its report: threads, logging, plugins, the study's
    models, the data (generated once, before any worker starts) and the runs. Returns the
    command line as typed and the runs."""
    harness.start(args)
    register_models()
    ensure_generated(args.root, study_spec(args), progress=False)
    return command_line(script, argv), run_study(args)


def publish(args: argparse.Namespace, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Print a study's report and (re)write its marked section of ``--out``."""
    harness.publish(text, args.out, begin, end)


# what fusion_study.py reads here until it trains through the harness (helper head moves it)
_quiet, _metrics = harness.quiet, harness.metrics


def _record(args: argparse.Namespace, runs: list[dict[str, Any]], r: dict[str, Any], i: int,
            total: int, start: float, progress: Callable[..., None]) -> None:
    runs.append(r)
    if args.runs_file:
        harness.RunsFile(args.runs_file).append(r)
    progress(f"[{i}/{total}] {harness._progress_line(r)}", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study, print the table and verdicts, optionally write ``--out``."""
    args = parse_args(argv)
    command, result = start_study(args, "synthetic_study.py", argv)
    text = report(args, result, attribute_oracle(study_spec(args)), command)
    publish(args, text)
    return {"runs": result.runs, "summary": summarise(result.runs), "wall_s": result.wall_s,
            "report": text}


if __name__ == "__main__":
    main()
