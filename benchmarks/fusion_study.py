#!/usr/bin/env python
"""Does SDTPS earn its place? Token selection against no selection, against selection turned
off (keep all) and against an HDM+ATM-style fusion, at a token count where selection matters
(issue 23). Same backbone (``sdtps_vit_tiny`` from random init), data, budget and seeds.

Data: ``synthetic_msreid``, ``cue="localized"``, ``distractors``: per modality the identity's
framed cue (1x2 cells of the patch grid), ``distractors`` other identities of the split in
unframed cells of the same size, and clutter in every other cell (no plain cells). Primary
regime: 64x32 images at patch 8 (``sdtps.patch_size``): N = 32 patches, K = 16, N_c = 6.

Settings (``--settings``, default all); each is ranked with its ``ori`` feature, its token
branch alone and its shipped feature (the first):

=============  ============================================================================
no_selection   backbone + guide + ``ori`` head (``use_sdtps False``); feature ``ori``
keep_all       the new head's model with ``ratio 1.0`` (every patch kept, ``num_aggr`` = the
               selecting model's N_c): the control for selection itself
previous_head  SDTPS as before issue 23: head ``mean`` (mean of [V̂, e]), top-K, beta 0.25
new_head       SDTPS with head ``refine`` (guide cross-attends [V̂, e]), selection ``ste``
               (straight-through soft mask; the score learns from the retrieval losses),
               beta 0.1 (the learned predictor can outweigh the guide cosines, see
               docs/model.md "Why the selection missed the cue")
moe_reference  backbone + guide + ``ori`` head + DeMo-style HDM + ATM (``moe_reference.py``,
               unchanged, DeMo-sized); feature ``concat`` = [ori, moe]
residual_head  (amendment 1, below) SDTPS with head ``residual`` (the untouched guide plus a
               zero-initialised correction that cross-attends the enhanced tokens of every
               modality), top-K, beta 0.25 (the package's selection defaults)
keep_all_res   (amendment 1) the residual head's model with ``ratio 1.0`` (``num_aggr`` = N_c)
=============  ============================================================================

FIXED BEFORE THE FIRST COMPARISON RUN (issue 23; committed with this docstring, not changed
after any comparison result):

* spec: :func:`regime_spec` at the defaults (48 train / 48 test ids, 3 cameras x 2 images,
  64x32, patch 8, cue 1x2, 1 distractor, clutter in every other cell, data seed 0);
* budget: :data:`EPOCHS` epochs, batch 32 (4 images per id), the demo's Adam lr 1e-3 with
  warm-up cosine. The budget pilot is the study's first run, ``no_selection`` seed 0 (tested
  after every epoch): the study goes on only if its last 4 epochs lie within 1 mAP and its
  final mAP in [40, 85] (:func:`budget_check`); otherwise it stops before any comparison run
  (:class:`BudgetError`) and the budget is re-piloted (more epochs first), then committed again;
* seeds: 0..15 (``train.seed``: init, sampling, augmentation), the same for every setting;
  the pilots of the new head ran on data seed 1, never on the comparison's data;
* **the rule that picks the shipped head**: the package default becomes ``new_head``'s
  (``sdtps.head refine``, ``sdtps.selection ste``, ``sdtps.beta 0.1``) if and only if, with
  all 16 seeds of both settings finished, the 95 % paired t-interval of
  ``new_head - previous_head`` (shipped feature ``concat``, mAP) lies above 0. Otherwise the
  default stays ``previous_head``'s (``mean``, ``topk``, 0.25). Until the 16 seeds are in,
  the default stays ``previous_head``'s and the JSON says ``"rule_applied": false``.

AMENDMENT 1 (committed before the first comparison run of its two settings, after seeds 0..2 of
the settings above had shown ``new_head`` below ``previous_head``; the spec, budget, seeds and the
first rule above are unchanged): the settings ``residual_head`` and ``keep_all_res`` join the
study, with the same regime, budget and seeds 0..15. Their head was piloted on data seed 1 only
(train seed 0; docs/model.md). **Second rule**, applied only when the first rule keeps
``previous_head``: the package default becomes ``residual_head``'s (``sdtps.head residual``,
selection unchanged) if and only if, with all 16 seeds of both settings finished, the 95 %
paired t-interval of ``residual_head - previous_head`` (``concat``, mAP) lies above 0.

AMENDMENT 2 (the N = 128 confirmation's data; committed after its budget pilot failed and before
any comparison run at N = 128; nothing of the primary study changed): at 128x64, patch 8, with
the primary's 1x2-cell cue (1.6 % of the image instead of 6.3 %), the pilot ``no_selection``
seed 0 ended at 5.6 mAP after 36 epochs (it started learning only at epoch 18, when the cosine
schedule had half decayed; runs file ``fusion_study_n128_runs.jsonl``) and the gate rejected
the budget. The confirmation keeps the budget and instead keeps the *scene*: the cue covers
the primary regime's share of the image (:func:`scaled_cue`: 2x4 of 16x8 cells, 8 of N = 128;
1x2 of 8x4 unchanged at N = 32), the distractor paints as many cells as the cue, clutter fills
the rest: the primary's images at twice the resolution, tokenised four times finer. Its own
budget pilot (``no_selection`` seed 0, same criterion) runs first; ``--cue-size`` overrides.

    python benchmarks/fusion_study.py --root /tmp/fusion-data --jobs 1 \\
        --json benchmarks/results/fusion_study.json --out benchmarks/RESULTS.md
    python benchmarks/fusion_study.py --height 128 --width 64 --seeds 6 \\
        --settings <shipped>,no_selection,moe_reference --primary benchmarks/results/fusion_study.json \\
        --json benchmarks/results/fusion_study_n128.json --out benchmarks/RESULTS.md --readme README.md \\
        --runs-file benchmarks/results/fusion_study_n128_runs.jsonl     # N = 128 confirmation
    python benchmarks/fusion_study.py --smoke                            # seconds (the tests)

``--primary`` makes a run the confirmation of the primary study whose JSON summary it names: the
shipped setting is the primary's (it must be among ``--settings``), the JSON gains
``"confirmation"`` (each paired difference both studies hold, with whether their means agree in
sign), and the report and README sections are the regime's own (``fusion_study_n<N>``). The
confirmation's budget pilot is its own ``no_selection`` seed 0, with the same criterion.

Finished runs are appended to ``--runs-file`` (default
``benchmarks/results/fusion_study_runs.jsonl``, committed) keyed by the budget and the
setting's definition; a rerun reuses them, so the study resumes across sessions.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import fusion_report
import harness
from harness import Setting
from moe_reference import fusion_parameters, register_models

from torchreid_sdtps import config
from torchreid_sdtps.data.synthetic import SyntheticSpec, ensure_generated
from torchreid_sdtps.engine.hooks import EngineHook
from torchreid_sdtps.models.sdtps import num_aggregated, num_keep

__all__ = ["SETTINGS", "EPOCHS", "SEEDS", "BASELINE", "NEW", "PREVIOUS", "RESIDUAL", "CONTROLS",
           "PAIRS", "regime_spec",
           "settings_for", "build_config", "run_one", "step_times", "summary", "shipped",
           "budget_check", "BudgetError", "CONFIRM_SEEDS", "scaled_cue", "markers", "read_primary",
           "confirmation", "outcome",
           "t_interval", "paired", "report", "parse_args", "main"]

BASELINE, NEW, PREVIOUS, KEEP_ALL, MOE = ("no_selection", "new_head", "previous_head", "keep_all",
                                          "moe_reference")
RESIDUAL, KEEP_ALL_RES = "residual_head", "keep_all_res"  # amendment 1
EPOCHS, SEEDS = 36, 16
#: the seeds the confirmation at the real token count needs (issue 23: at least 6)
CONFIRM_SEEDS = 6
RATIO, AGGR_RATIO = 0.5, 0.4
_NO_AUX = ("sdtps.weight_align", "0.0", "sdtps.weight_ratio", "0.0")
_NEW = ("sdtps.head", "refine", "sdtps.selection", "ste", "sdtps.beta", "0.1")
_PREVIOUS = ("sdtps.head", "mean", "sdtps.selection", "topk", "sdtps.beta", "0.25")
_RESIDUAL = ("sdtps.head", "residual", "sdtps.selection", "topk", "sdtps.beta", "0.25")
_SDTPS_EVALS = ("concat", "sdtps", "ori")

#: the pairs of the JSON summary and the report (a - b, same seed)
PAIRS: tuple[tuple[str, str], ...] = (
    (NEW, BASELINE), (NEW, MOE), (NEW, KEEP_ALL), (NEW, PREVIOUS),
    (PREVIOUS, BASELINE), (PREVIOUS, MOE), (MOE, BASELINE),
    (RESIDUAL, BASELINE), (RESIDUAL, MOE), (RESIDUAL, KEEP_ALL_RES), (RESIDUAL, PREVIOUS),
    (RESIDUAL, NEW))
#: the selection-free controls (no recall line in the report)
CONTROLS = frozenset({KEEP_ALL, KEEP_ALL_RES})


def settings_for(num_patches: int) -> dict[str, Setting]:
    """The settings at a regime of ``num_patches`` patches per modality (``keep_all`` pins
    ``num_aggr`` to the selecting models' N_c there)."""
    n_c = num_aggregated(num_patches, RATIO, AGGR_RATIO)
    return {
        BASELINE: Setting("no selection: backbone + guide + ori head",
                          opts=("sdtps.use_sdtps", "False", *_NO_AUX), evals=("ori",)),
        NEW: Setting("new head: guide cross-attends [V̂, e], ste, beta 0.1", opts=_NEW,
                     evals=_SDTPS_EVALS),
        PREVIOUS: Setting("previous head: mean of [V̂, e], top-K, beta 0.25", opts=_PREVIOUS,
                          evals=_SDTPS_EVALS),
        KEEP_ALL: Setting(f"keep all: new head, ratio 1.0, N_c {n_c}",
                          opts=(*_NEW, "sdtps.ratio", "1.0", "sdtps.num_aggr", str(n_c)),
                          evals=_SDTPS_EVALS),
        MOE: Setting("HDM + ATM reference (DeMo-style MoE)", model="moe_reference_vit_tiny",
                     opts=("sdtps.use_sdtps", "False", *_NO_AUX), evals=("concat", "moe", "ori")),
        RESIDUAL: Setting("residual head: guide + zero-init cross-modal correction, top-K, "
                          "beta 0.25", opts=_RESIDUAL, evals=_SDTPS_EVALS),
        KEEP_ALL_RES: Setting(f"keep all: residual head, ratio 1.0, N_c {n_c}",
                              opts=(*_RESIDUAL, "sdtps.ratio", "1.0", "sdtps.num_aggr", str(n_c)),
                              evals=_SDTPS_EVALS),
    }


#: settings whose seed 0 tests after every epoch (the budget pilot and the two heads)
CURVES = frozenset({BASELINE, NEW, PREVIOUS})
#: the settings of the primary regime (N = 32)
SETTINGS = settings_for(32)


def markers(num_patches: int, readme: bool = False) -> tuple[str, str]:
    """The begin/end markers of a regime's section: RESULTS.md ``fusion_study_n<N>``; in the
    README the primary regime (N = 32) owns ``fusion_study`` and others ``fusion_study_n<N>``."""
    tag = "fusion_study" if readme and num_patches == 32 else f"fusion_study_n{num_patches}"
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


BEGIN, END = markers(32)
#: the token-branch feature of each setting (the "branch alone" row)
BRANCH = {KEEP_ALL: "sdtps", PREVIOUS: "sdtps", NEW: "sdtps", MOE: "moe", RESIDUAL: "sdtps",
          KEEP_ALL_RES: "sdtps"}


def scaled_cue(grid: tuple[int, int]) -> tuple[int, int]:
    """The cue's cells on a ``(rows, cols)`` patch grid when it covers the primary regime's
    share of the image (1x2 of 8x4 cells: an eighth of the height, half the width); 2x4 of the
    16x8 grid at N = 128 (amendment 2)."""
    return max(1, grid[0] // 8), max(1, grid[1] // 2)


def regime_spec(height: int = 64, width: int = 32, patch_size: int = 8, distractors: int = 1,
                data_seed: int = 0, smoke: bool = False,
                cue_size: tuple[int, int] | None = None) -> SyntheticSpec:
    """The study's data: the cue (``cue_size`` cells, default :func:`scaled_cue`),
    ``distractors`` identities, clutter in every other cell (``clutter`` = all cells: no plain
    cells)."""
    grid = (height // patch_size, width // patch_size)
    cells = grid[0] * grid[1]
    cue = tuple(cue_size) if cue_size else scaled_cue(grid)
    sizes = (dict(num_train_ids=6, num_test_ids=6, num_cameras=2, images_per_camera=2) if smoke
             else dict(num_train_ids=48, num_test_ids=48, num_cameras=3, images_per_camera=2))
    return SyntheticSpec(**sizes, height=height, width=width, cue="localized", cue_size=cue,
                         clutter=cells, distractors=distractors, patch_size=patch_size,
                         seed=data_seed)


def build_config(args: argparse.Namespace, setting: Setting, seed: int, save_dir: str,
                 curve: bool = False) -> Any:
    """The demo config with the study's data, patch size, budget, seed and the setting's
    overrides (``curve``: test after every epoch)."""
    opts = harness.spec_overrides(args.spec) + [
        "data.root", args.root, "data.save_dir", save_dir, "use_gpu", "False",
        "model.pretrained", "False", "sdtps.patch_size", str(args.patch_size),
        "train.max_epoch", str(args.epochs), "train.batch_size", str(args.batch),
        "train.seed", str(seed), "train.print_freq", "1000",
        "test.eval_freq", "1" if curve else "-1", "test.ranks", "[1, 5, 10]",
        "test.compare_untrained", "False", "sampler.num_instances", str(args.num_instances),
        *setting.overrides(),
    ]
    return config.load_config(opts=opts, demo=True)


class _EpochLog(EngineHook):
    """One stderr line per epoch (the study runs for hours: shows where it is)."""

    def __init__(self, name: str, seed: int, epochs: int) -> None:
        self.name, self.seed, self.epochs, self.start = name, seed, epochs, time.time()

    def after_epoch(self, engine: Any, epoch: int) -> None:
        sys.stderr.write(f"  {self.name} seed {self.seed}: epoch {epoch + 1}/{self.epochs} "
                         f"({time.time() - self.start:.0f} s)\n")
        sys.stderr.flush()


def run_one(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Train setting ``name`` with ``seed`` through ``build_all`` and rank it with each of its
    eval features; seed 0 of :data:`CURVES` also tests after every epoch (the curve)."""
    setting = args.catalog[name]
    record = harness.RecordHook()
    with harness.save_dir() as save_dir, harness.quiet():
        cfg = build_config(args, setting, seed, save_dir, curve=seed == 0 and name in CURVES)
        done = harness.train_and_rank(cfg, setting.evals,
                                      hooks=[record, _EpochLog(name, seed, args.epochs)])
    return {"results": done.results, "curve": record.curve, "loss": record.epoch_losses(),
            "fusion_params": fusion_parameters(done.model),
            "params": sum(p.numel() for p in done.model.parameters()),
            "train_s": round(done.train_s, 1)}


def step_times(args: argparse.Namespace, repeats: int = 12) -> dict[str, float]:
    """Minimum seconds of one training step (``engine.forward_backward``: forward, losses,
    backward, Adam step) per setting on the same batch, the settings interleaved in this
    process so that a busy machine slows them alike."""
    from torchreid_sdtps import build

    engines = {}
    with harness.save_dir() as save_dir, harness.quiet():
        for name in args.settings:
            cfg = build_config(args, args.catalog[name], 0, os.path.join(save_dir, name))
            dm, _, _, _, engine = build.build_all(cfg)
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


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's numbers depend on besides its setting and seed (resumed runs must match)."""
    return {"study": "fusion_n", "epochs": args.epochs, "batch": args.batch,
            "num_instances": args.num_instances, "patch_size": args.patch_size,
            "spec": args.spec.to_dict()}


class BudgetError(RuntimeError):
    """The budget pilot (``no_selection``, seed 0) failed the committed criterion."""


def budget_check(curve: Sequence[Mapping[str, float]], last: int = 4, spread: float = 1.0,
                 low: float = 40.0, high: float = 85.0) -> tuple[bool, str]:
    """The committed budget criterion on a learning curve (test mAP after each epoch): the
    last ``last`` epochs within ``spread`` mAP points and the final mAP in [low, high]."""
    maps = [100 * c["mAP"] for c in curve]
    if len(maps) < last:
        return False, f"{len(maps)} evaluations, need the last {last} epochs"
    tail = maps[-last:]
    flat, level = max(tail) - min(tail) <= spread, low <= maps[-1] <= high
    text = (f"no_selection seed 0: last {last} epochs {', '.join(f'{m:.1f}' for m in tail)} "
            f"(spread {max(tail) - min(tail):.2f}, {'flat' if flat else 'NOT flat'}), final "
            f"{maps[-1]:.1f} ({'in' if level else 'NOT in'} [{low:.0f}, {high:.0f}])")
    return flat and level, text


# ----------------------------------------------------------------------------- statistics
t_interval = harness.t_interval


def paired(runs: Sequence[Mapping[str, Any]], a: str, b: str, metric: str = "mAP"
           ) -> tuple[float, float, int]:
    """Mean and 95 % half-width of ``a - b`` on each setting's shipped feature, same seeds."""
    cat = SETTINGS
    return harness.paired(harness.values(runs, a, cat[a].evals[0], metric),
                          harness.values(runs, b, cat[b].evals[0], metric))


def _rule(runs: Sequence[Mapping[str, Any]], candidate: str, seeds: int) -> bool | None:
    """One committed rule: ``candidate - previous_head`` (``concat``, paired 95 % interval)
    above 0 with ``seeds`` seeds of both; None while fewer seeds are in."""
    a = harness.values(runs, candidate, "concat")
    b = harness.values(runs, PREVIOUS, "concat")
    if len(set(a) & set(b)) < seeds:
        return None
    mean, half, _ = harness.paired(a, b)
    return mean - half > 0


def shipped(runs: Sequence[Mapping[str, Any]], seeds: int = SEEDS) -> tuple[str, bool]:
    """The committed rules, in order: (setting whose head the package ships, whether the rules
    were applied). First ``new_head`` against ``previous_head``; only if that keeps
    ``previous_head``, amendment 1's ``residual_head`` against ``previous_head``."""
    first = _rule(runs, NEW, seeds)
    if first is None:
        return PREVIOUS, False
    if first:
        return NEW, True
    second = _rule(runs, RESIDUAL, seeds)
    if second is None:
        return PREVIOUS, False
    return (RESIDUAL if second else PREVIOUS), True


def read_primary(path: str) -> dict[str, Any]:
    """The primary study's JSON summary (``--primary``), with the keys a confirmation uses."""
    try:
        with open(path, encoding="utf-8") as fh:
            primary = json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--primary {path}: no such file (expected the primary study's "
                         "--json summary, e.g. benchmarks/results/fusion_study.json)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--primary {path}: not JSON ({exc})") from None
    missing = [k for k in ("regime", "shipped", "rule_applied", "paired")
               if not isinstance(primary, dict) or k not in primary]
    if missing:
        raise ValueError(f"--primary {path}: missing key(s) {missing}; expected a summary "
                         "written by benchmarks/fusion_study.py --json")
    return primary


def outcome(args: argparse.Namespace, runs: Sequence[Mapping[str, Any]]) -> tuple[str, bool]:
    """(shipped setting, rules applied): the committed rules on these runs, or, for a
    confirmation (``--primary``), the primary study's outcome."""
    if args.primary is not None:
        return args.primary["shipped"], bool(args.primary["rule_applied"])
    return shipped(runs, args.seeds_required)


def confirmation(primary: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    """Each paired difference both the primary study and this one hold: both intervals and
    whether the two means have the same sign (issue 23: the confirmation agrees in sign)."""
    out = {}
    for key, here in stats["paired"].items():
        there = primary["paired"].get(key)
        if there is not None:
            out[key] = {"primary": there, "confirmation": here,
                        "agree": (there["mean"] > 0) == (here["mean"] > 0)}
    return {"primary_regime": primary["regime"], "pairs": out}


def _stats(args: argparse.Namespace, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cat = {n: args.catalog[n] for n in args.catalog if n in args.settings}
    return harness.json_summary(runs, cat, [p for p in PAIRS if p[0] in cat and p[1] in cat])


def summary(args: argparse.Namespace, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's JSON summary (points, 95 % t-intervals) plus every run; a confirmation's
    also holds ``"confirmation"`` (:func:`confirmation`)."""
    stats = _stats(args, runs)
    name, applied = outcome(args, runs)
    grid = args.spec.grid
    out = {"regime": {"patches": grid[0] * grid[1], "height": args.spec.height,
                      "width": args.spec.width, "patch_size": args.patch_size,
                      "data_seed": args.spec.seed, "distractors": args.spec.distractors},
           "shipped": name, "rule_applied": applied, **stats}
    if args.primary is not None:
        out["confirmation"] = confirmation(args.primary, stats)
    return {**out, "runs": list(runs)}


def report(args: argparse.Namespace, result: harness.Runs, times: dict[str, float],
           command: str) -> str:
    """The markdown section (``fusion_report.render``)."""
    confirm = (confirmation(args.primary, _stats(args, result.runs))
               if args.primary is not None else None)
    return fusion_report.render(args, result, times, command, branch=BRANCH, pairs=PAIRS,
                                controls=CONTROLS, shipped=outcome(args, result.runs),
                                confirm=confirm)


# ----------------------------------------------------------------------------- flags, main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The harness's study flags plus the regime's and ``--json``."""
    parser = harness.study_parser(__doc__.split("\n\n")[0], SETTINGS, epochs=EPOCHS,
                                  runs_file=os.path.join("benchmarks", "results",
                                                         "fusion_study_runs.jsonl"),
                                  root=os.path.join("log", "fusion-data"))
    parser.set_defaults(seeds=SEEDS, jobs=1)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--distractors", type=int, default=1,
                        help="other identities shown in every image (cells of the cue's size)")
    parser.add_argument("--patch-size", type=int, default=8, help="ViT patch size (sdtps.patch_size)")
    parser.add_argument("--cue-size", type=int, nargs=2, default=None, metavar=("ROWS", "COLS"),
                        help="the cue's cells (default: the primary regime's image share, "
                             "1x2 of 8x4 cells, scaled to the grid)")
    parser.add_argument("--height", type=int, default=64, help="image height")
    parser.add_argument("--width", type=int, default=32, help="image width")
    parser.add_argument("--json", default="", help="write every run and the summary here")
    parser.add_argument("--primary", default="",
                        help="the primary study's --json summary: run as its confirmation (its "
                             "shipped setting, sign agreement, this regime's own sections)")
    parser.add_argument("--readme", default="",
                        help="rewrite the study's short table in this file (README.md)")
    parser.add_argument("--no-budget-gate", dest="budget_gate", action="store_false",
                        help="skip the budget pilot check (no_selection seed 0 first; the "
                             "study stops before any comparison run when it fails)")
    parser.add_argument("--time-repeats", type=int, default=12,
                        help="round-robin repeats of the training-step timing (0: skip it)")
    args = harness.parse_study_args(parser, argv, SETTINGS)
    try:
        args.spec = regime_spec(args.height, args.width, args.patch_size, args.distractors,
                                args.data_seed, smoke=args.smoke, cue_size=args.cue_size)
    except ValueError as exc:
        parser.error(str(exc))
    grid = args.spec.grid
    args.catalog = settings_for(grid[0] * grid[1])
    args.seeds_required = args.seeds if args.smoke else SEEDS
    args.primary_path, args.primary = args.primary, None
    if args.primary_path:
        try:
            args.primary = read_primary(args.primary_path)
        except ValueError as exc:
            parser.error(str(exc))
        if args.primary["shipped"] not in args.settings:
            parser.error(f"--primary {args.primary_path} ships {args.primary['shipped']!r}: "
                         "a confirmation must run it; add it to --settings")
        args.seeds_required = args.seeds if args.smoke else CONFIRM_SEEDS
    if args.smoke:
        args.time_repeats = min(args.time_repeats, 2)
        args.budget_gate = False
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the study, time the steps, print the report, write ``--out``/``--json``."""
    args = parse_args(argv)
    harness.start(args)
    register_models()
    command = harness.command_line("fusion_study.py", argv)
    ensure_generated(args.root, args.spec, progress=False)
    n = args.spec.grid[0] * args.spec.grid[1]
    print(f"regime: {args.spec.height}x{args.spec.width} at patch {args.patch_size}: N = {n}, "
          f"K = {num_keep(n, RATIO)}, N_c = {num_aggregated(n, RATIO, AGGR_RATIO)}", flush=True)
    run = functools.partial(harness.run_study, functools.partial(run_one, args), args.catalog,
                            runs_file=args.runs_file, jobs=args.jobs, threads=args.threads,
                            setup=register_models)
    if args.budget_gate and BASELINE in args.settings:  # the pilot before any comparison run
        pilot = run([BASELINE], [0], budget(args)).runs[0]
        ok, text = budget_check(pilot["curve"])
        print(f"budget pilot: {text} -> {'accepted' if ok else 'REJECTED'}", flush=True)
        if not ok:
            raise BudgetError(f"the budget failed its pilot ({text}); no comparison run was "
                              "started. Re-pilot the budget (docs/model.md) before the study.")
    result = run(args.settings, list(range(args.seeds)), budget(args))
    times = step_times(args, args.time_repeats) if args.time_repeats else {}
    text = report(args, result, times, command)
    harness.publish(text, args.out, *markers(n))
    out = summary(args, result.runs)
    if args.readme:
        cat = {n: args.catalog[n] for n in args.catalog if n in args.settings}
        pairs = [(a, b) for a in cat for b in (BASELINE, MOE) if a != b and b in cat]
        stats = harness.json_summary(result.runs, cat, pairs)
        harness.write_section(args.readme, fusion_report.readme_table(
            args, stats, BASELINE, MOE, (out["shipped"], out["rule_applied"]),
            confirm=out.get("confirmation")), *markers(n, readme=True))
        print(f"written: {args.readme}")
    if args.json:
        from torchreid_sdtps.io import atomic_path

        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with atomic_path(args.json) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
        print(f"written: {args.json}")
    return {"runs": result.runs, "times": times, "summary": out, "report": text,
            "runs_read_back": result.read_back}


if __name__ == "__main__":
    main()
