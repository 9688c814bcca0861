#!/usr/bin/env python
"""Does SDTPS keep the informative tokens? A study on the localized-cue ``synthetic_msreid``.

Each modality's identity evidence sits in a framed region of 2 of the 6x3 = 18 patches, at a
random position per image and modality, amid patches of the same pattern family with random
values (``cue="localized"``, see ``docs/synthetic.md``). The generator records the cue patches,
so the engine measures, per modality, the **recall** of the kept tokens (cue patches kept /
cue patches; chance = the keep ratio K/N = 0.5) and their **precision** (chance = 2/18).

Settings (``--settings``, default all), each trained from random init with the project's
runner, the same data, budget and seeds (``benchmarks/harness.py``):

=============  =========================================================================
sdtps_topk     SDTPS, hard top-K (the default model: beta = 0.25)
gumbel         SDTPS, Gumbel top-K in training (``gumbel_noise`` 0.5)
no_sdtps       backbone + guide + ``ori`` head, no token selection (no recall to measure)
learned_only   score = learned MLP score only (``beta = 0``: ``(1-2β) s_p + β (...)``)
cosine_only    score = guide cosines only (``beta = 0.5``: the MLP term has weight 0)
=============  =========================================================================

Plus the untrained model (random init) as the chance reference of mAP and of recall.

    python benchmarks/selection_study.py --out benchmarks/RESULTS.md   # ~12 min, 2 cores
    python benchmarks/selection_study.py --smoke                      # seconds (the tests)

Finished runs are appended to ``--runs-file`` (default ``log/selection_study_runs.jsonl``); a
rerun with the same budget reuses them, so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from typing import Any

import harness
import synthetic_study as st
from harness import Setting

from torchreid_sdtps.data.synthetic import SyntheticSpec

__all__ = ["SETTINGS", "SELECTION_SPEC", "SMOKE_SPEC", "parse_args", "report", "main"]

BEGIN, END = "<!-- selection_study:begin -->", "<!-- selection_study:end -->"

_NO_SDTPS = ("sdtps.use_sdtps", "False", "sdtps.weight_align", "0.0", "sdtps.weight_ratio", "0.0")
SETTINGS: dict[str, Setting] = {
    "untrained": Setting("untrained (random init)", train=False),
    "sdtps_topk": Setting("SDTPS top-K (beta 0.25)"),
    "gumbel": Setting("SDTPS Gumbel top-K (noise 0.5)",
                      opts=("sdtps.selection", "gumbel", "sdtps.gumbel_noise", "0.5")),
    "no_sdtps": Setting("no SDTPS (guide + ori head)", opts=_NO_SDTPS, evals=("ori",)),
    "learned_only": Setting("SDTPS top-K, learned score only (beta 0)", opts=("sdtps.beta", "0.0")),
    "cosine_only": Setting("SDTPS top-K, guide cosines only (beta 0.5)",
                           opts=("sdtps.beta", "0.5")),
}

#: 96x48 images = the 6x3 patch grid of ``sdtps_vit_tiny``; cue = 1x2 patches; every non-cue
#: patch cluttered. Sized so that 15 trained runs fit ~12 min on 2 quiet cores.
SELECTION_SPEC = SyntheticSpec(num_train_ids=36, num_test_ids=24, num_cameras=3,
                               images_per_camera=2, height=96, width=48, cue="localized",
                               cue_size=(1, 2), clutter=16)
SMOKE_SPEC = SyntheticSpec(num_train_ids=6, num_test_ids=6, num_cameras=2, images_per_camera=2,
                           height=64, width=32, cue="localized", cue_size=(1, 2), clutter=6)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags of the study (those of ``synthetic_study.py`` with this study's settings)."""
    parser = st.study_parser(__doc__.split("\n\n")[0], SETTINGS,
                             default_settings=[n for n in SETTINGS if n != st.REFERENCE],
                             epochs=12, runs_file=os.path.join("log", "selection_study_runs.jsonl"))
    args = st.parse_study_args(parser, argv, SETTINGS)
    args.spec = SMOKE_SPEC if args.smoke else SELECTION_SPEC
    args.catalog = SETTINGS
    return args


def _cell(stats: dict[str, Any], metric: str) -> str:
    if metric not in stats:
        return "—"
    return f"{stats[metric]:5.1f} ± {stats[metric + '_std']:4.1f}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown: setting, seeds, mAP, Rank-1, selection recall and precision (mean ± std, %)."""
    lines = ["| setting | seeds | mAP (%) | Rank-1 (%) | selection recall (%) | "
             "selection precision (%) |", "| --- | --- | --- | --- | --- | --- |"]
    for label, s in summary.items():
        lines.append(f"| {label} | {s['n']} | {_cell(s, 'mAP')} | {_cell(s, 'R1')} | "
                     f"{_cell(s, 'recall')} | {_cell(s, 'precision')} |")
    return "\n".join(lines)


def _find(summary: dict[str, dict[str, Any]], name: str, trained: bool = True
          ) -> dict[str, Any] | None:
    return next((s for s in summary.values() if s["setting"] == name and s["trained"] == trained),
                None)


def verdicts(summary: dict[str, dict[str, Any]], chance: float) -> list[str]:
    """The study's questions answered from the numbers ('clear' = beyond the larger std)."""
    def compare(a: dict[str, Any], b: dict[str, Any], metric: str) -> str:
        diff = a[metric] - b[metric]
        spread = max(a[metric + "_std"], b[metric + "_std"])
        word = ("higher, clearly" if diff > spread else "lower, clearly" if -diff > spread
                else "within the seed spread")
        if min(a["n"], b["n"]) < 2:
            word = "single seed: no spread estimate"
        return f"{a[metric]:.1f} vs {b[metric]:.1f} ({diff:+.1f}; {word})"

    lines = []
    for name in ("sdtps_topk", "gumbel", "learned_only", "cosine_only"):
        s = _find(summary, name)
        if s is not None and "recall" in s:
            lo = s["recall"] - s["recall_std"]
            word = "above chance" if lo > chance else "not clearly above chance"
            if s["n"] < 2:
                word += " (single seed)"
            lines.append(f"{SETTINGS[name].label}: selection recall {s['recall']:.1f} ± "
                         f"{s['recall_std']:.1f} % vs chance {chance:.1f} % -> {word}")
    top, base = _find(summary, "sdtps_topk"), _find(summary, "no_sdtps")
    if top is not None and base is not None:
        lines.append(f"mAP, SDTPS top-K vs no SDTPS: {compare(top, base, 'mAP')}")
    for name in ("gumbel", "learned_only", "cosine_only"):
        s = _find(summary, name)
        if s is not None and top is not None:
            lines.append(f"{SETTINGS[name].label} vs top-K: mAP {compare(s, top, 'mAP')}"
                         + (f"; recall {compare(s, top, 'recall')}"
                            if "recall" in s and "recall" in top else ""))
    untrained = _find(summary, st.REFERENCE, trained=False)
    if untrained is not None and "recall" in untrained:
        lines.append(f"untrained model (random init): recall {untrained['recall']:.1f} %, "
                     f"mAP {untrained['mAP']:.1f} %")
    return lines


def report(args: argparse.Namespace, result: harness.Runs, command: str) -> str:
    """The markdown section: command, machine, data, budget, table, verdicts, per-run JSON."""
    spec, runs = args.spec, result.runs
    summary = st.summarise(runs, SETTINGS)
    chances = [r["results"][f]["chance_recall"] for r in runs for f in r["results"]
               if "chance_recall" in r["results"][f]]
    chance = 100 * statistics.fmean(chances) if chances else float("nan")
    train_times = [r["train_s"] for r in runs if r["trained"]]
    n_cue = spec.cue_size[0] * spec.cue_size[1]
    grid = spec.grid
    lines = [
        "### Token selection on localized cues (`benchmarks/selection_study.py`)",
        "",
        *harness.footer(command, result, args.jobs),
        f"- median {statistics.median(train_times) if train_times else 0:.0f} s per trained run",
        f"- data: `synthetic_msreid` with `cue=\"localized\"`: {spec.num_train_ids} train / "
        f"{spec.num_test_ids} test ids, {spec.num_cameras} cameras x {spec.images_per_camera} "
        f"images, {spec.height}x{spec.width} = {grid[0]}x{grid[1]} patches of "
        f"{spec.patch_size} px; cue {spec.cue_size[0]}x{spec.cue_size[1]} patches per modality "
        f"({n_cue}/{grid[0] * grid[1]}), {min(spec.clutter, grid[0] * grid[1] - n_cue)} clutter "
        "patches",
        f"- model / budget: `sdtps_vit_tiny` from random init, {args.epochs} epochs, batch "
        f"{args.batch} ({args.num_instances} images per id), the demo's optimizer and schedule, "
        f"seeds {list(range(args.seeds))}; keep ratio 0.5 (chance recall {chance:.1f} %, chance "
        f"precision {100 * n_cue / (grid[0] * grid[1]):.1f} %)",
        "- recall / precision: mean over the three modalities of the per-image fraction of cue "
        "patches kept / of kept patches that are cue patches, on the test split (eval mode, "
        "hard top-K)",
        "",
        table(summary),
        "",
        "Verdicts:",
        "",
        *[f"- {v}" for v in verdicts(summary, chance)],
        "",
        "<details><summary>per-run numbers (JSON)</summary>",
        "",
        "```json",
        json.dumps([{k: r[k] for k in ("setting", "seed", "trained", "train_s", "results")}
                       for r in runs])[:20000],
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study, print the report, optionally write it into ``--out``."""
    args = parse_args(argv)
    command, result = st.start_study(args, "selection_study.py", argv)
    text = report(args, result, command)
    st.publish(args, text, BEGIN, END)
    return {"runs": result.runs, "summary": st.summarise(result.runs, SETTINGS),
            "wall_s": result.wall_s, "report": text}


if __name__ == "__main__":
    main()
