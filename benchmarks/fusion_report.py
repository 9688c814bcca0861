"""The markdown section of ``benchmarks/fusion_study.py``: tables with t-intervals, paired
differences to ``no_selection``, learning curves of seed 0 and the per-run numbers."""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

import synthetic_study as st
from scipy import stats as _stats

__all__ = ["render", "verdict", "t_interval", "main_values", "paired", "TARGET_HALF_WIDTH"]

#: the issue's power criterion: every setting's mAP 95 % CI half-width at most this (points)
TARGET_HALF_WIDTH = 2.5


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided t-interval (nan half-width for one value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan")
    return mean, float(_stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / n ** 0.5


def main_values(runs: Sequence[dict[str, Any]], catalog: dict[str, Any], name: str,
                metric: str = "mAP", feature: str | None = None) -> dict[int, float]:
    """``{seed: metric in %}`` of setting ``name`` (``feature``: default its main one, the
    first of ``catalog[name].evals``)."""
    feature = feature or catalog[name].evals[0]
    return {r["seed"]: 100 * r["results"][feature][metric] for r in runs
            if r["setting"] == name and feature in r["results"]
            and metric in r["results"][feature]}


def paired(runs: Sequence[dict[str, Any]], catalog: dict[str, Any], name: str, base: str,
           metric: str = "mAP") -> tuple[float, float, int]:
    """Mean and t-interval half-width of ``name - base`` over the seeds both have, and n."""
    a, b = main_values(runs, catalog, name, metric), main_values(runs, catalog, base, metric)
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not diffs:
        return float("nan"), float("nan"), 0
    return (*t_interval(diffs), len(diffs))


def _fmt(values: Sequence[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean, half = t_interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{mean:.{digits}f}"


def verdict(mean: float, half: float) -> str:
    """Reading of a paired difference: its 95 % interval above, below or around 0."""
    if math.isnan(half):
        return "one seed: no interval"
    if mean - half > 0:
        return "higher (interval above 0)"
    if mean + half < 0:
        return "lower (interval below 0)"
    return "no difference detected (interval contains 0)"


def _main_table(runs: Sequence[dict[str, Any]], names: Sequence[str], times: dict[str, float],
                catalog: dict[str, Any]) -> tuple[list[str], float]:
    lines = ["| setting | main feature | seeds | mAP (%) | Rank-1 (%) | mAP, `ori` feature (%) "
             "| selection recall (%) | fusion-part params | model params | train step (ms, min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    worst = 0.0
    for name in names:
        rs = [r for r in runs if r["setting"] == name]
        if not rs:
            continue
        feature = catalog[name].evals[0]
        maps = list(main_values(runs, catalog, name).values())
        worst = max(worst, t_interval(maps)[1]) if len(maps) > 1 else math.inf
        r1 = list(main_values(runs, catalog, name, "R1").values())
        ori = list(main_values(runs, catalog, name, feature="ori").values()) if feature != "ori" else []
        recall = list(main_values(runs, catalog, name, "recall").values())
        step = f"{1000 * times[name]:.0f}" if name in times else "—"
        lines.append(f"| {catalog[name].label} (`{name}`) | `{feature}` | {len(maps)} | "
                     f"{_fmt(maps)} | {_fmt(r1)} | {_fmt(ori) if ori else '—'} | "
                     f"{_fmt(recall) if recall else '—'} | {rs[0]['fusion_params']:,} | "
                     f"{rs[0]['params']:,} | {step} |")
    return lines, worst


def _paired_table(runs: Sequence[dict[str, Any]], names: Sequence[str], catalog: dict[str, Any],
                  baseline: str) -> list[str]:
    lines = [f"| setting − `{baseline}` (same seed) | seeds | Δ mAP (points) | Δ Rank-1 "
             "(points) | reading (mAP) |", "| --- | --- | --- | --- | --- |"]
    for name in names:
        if name == baseline:
            continue
        mean, half, n = paired(runs, catalog, name, baseline)
        if not n:
            continue
        r_mean, r_half, _ = paired(runs, catalog, name, baseline, metric="R1")
        lines.append(f"| `{name}` | {n} | {mean:+.1f} ± {half:.1f} | {r_mean:+.1f} ± {r_half:.1f} "
                     f"| {verdict(mean, half)} |")
    base = main_values(runs, catalog, baseline)
    for name in names:  # the fusion models' shared `ori` feature alone, same seeds
        if name == baseline or "ori" not in catalog[name].evals[1:]:
            continue
        ori = main_values(runs, catalog, name, feature="ori")
        diffs = [ori[s] - base[s] for s in sorted(set(ori) & set(base))]
        if diffs:
            mean, half = t_interval(diffs)
            lines.append(f"| `{name}`, `ori` feature alone | {len(diffs)} | {mean:+.1f} ± "
                         f"{half:.1f} | | {verdict(mean, half)} |")
    for a, b in (("sdtps", "moe_reference"), ("sdtps_block", "moe_reference"),
                 ("sdtps", "sdtps_block")):
        if a in names and b in names:
            mean, half, n = paired(runs, catalog, a, b)
            if n:
                r_mean, r_half, _ = paired(runs, catalog, a, b, metric="R1")
                lines.append(f"| `{a}` − `{b}` | {n} | {mean:+.1f} ± {half:.1f} | "
                             f"{r_mean:+.1f} ± {r_half:.1f} | {verdict(mean, half)} |")
    return lines


def _recall_lines(runs: Sequence[dict[str, Any]], names: Sequence[str],
                  catalog: dict[str, Any]) -> list[str]:
    """Per selection setting: recall of each seed and its correlation with the main mAP."""
    lines = []
    for name in names:
        recall = main_values(runs, catalog, name, "recall")
        if len(recall) < 3:
            continue
        maps = main_values(runs, catalog, name)
        seeds = sorted(set(recall) & set(maps))
        r = statistics.correlation([recall[s] for s in seeds], [maps[s] for s in seeds])
        lines.append(f"- `{name}`: selection recall per seed (%) "
                     f"{', '.join(f'{recall[s]:.0f}' for s in seeds)}; seeds above 80 %: "
                     f"{sum(recall[s] > 80 for s in seeds)} of {len(seeds)}; Pearson r(recall, "
                     f"mAP) = {r:+.2f}")
    return lines


def _curves(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    seed0 = {r["setting"]: r for r in runs if r["seed"] == 0 and r.get("curve")}
    shown = [n for n in names if n in seed0]
    if not shown:
        return []
    epochs = max(len(seed0[n]["curve"]) for n in shown)
    lines = ["Learning curves, seed 0 (test mAP % after each epoch, main feature / mean training "
             "ID + triplet loss of the epoch):", "",
             "| epoch | " + " | ".join(f"`{n}`" for n in shown) + " |",
             "| --- |" + " --- |" * len(shown)]
    for e in range(epochs):
        cells = []
        for n in shown:
            curve, loss = seed0[n]["curve"], seed0[n]["loss"]
            m = f"{100 * curve[e]['mAP']:.1f}" if e < len(curve) else "—"
            cells.append(f"{m} / {loss[e]:.2f}" if e < len(loss) else m)
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return lines


def render(args: argparse.Namespace, runs: Sequence[dict[str, Any]], times: dict[str, float],
           wall_s: float, command: str) -> str:
    """The whole section."""
    catalog, baseline = args.catalog, args.baseline
    spec, names = args.spec, [n for n in catalog if n in args.settings]
    grid = spec.grid
    n_cells, n_cue = grid[0] * grid[1], spec.cue_size[0] * spec.cue_size[1]
    clutter = min(spec.clutter, n_cells - n_cue * (1 + spec.distractors))
    seeds = sorted({r["seed"] for r in runs})
    train_s = [r["train_s"] for r in runs]
    table, worst = _main_table(runs, names, times, catalog)
    met = "met" if worst <= TARGET_HALF_WIDTH else "NOT met"
    lines = [
        "### SDTPS vs no selection vs HDM+ATM, with power (`benchmarks/fusion_study.py`)",
        "",
        f"- command: `{command}`",
        f"- machine: {st.machine()}",
        f"- date: {st.now()}; {wall_s / 60:.1f} min wall for this invocation with {args.jobs} "
        f"parallel job(s) ({len(runs) - getattr(args, 'resumed', 0)} runs now, "
        f"{getattr(args, 'resumed', 0)} read back from `--runs-file`); median "
        f"{statistics.median(train_s) if train_s else 0:.0f} s per run",
        f"- data: `synthetic_msreid`, `cue=\"localized\"`, `distractors={spec.distractors}`: "
        f"{spec.num_train_ids} train / {spec.num_test_ids} test ids, {spec.num_cameras} cameras "
        f"x {spec.images_per_camera} images, {spec.height}x{spec.width} = {grid[0]}x{grid[1]} "
        f"patches; per modality: the framed cue ({n_cue} cells), {spec.distractors} other "
        f"identit{'y' if spec.distractors == 1 else 'ies'} of the split in {n_cue} unframed "
        f"cells each, {clutter} clutter cells; data seed {spec.seed}",
        f"- model / budget: `sdtps_vit_tiny` from random init, {args.epochs} epochs, batch "
        f"{args.batch} ({args.num_instances} images per id), the demo's optimizer and schedule; "
        f"seeds {seeds} (seed = `train.seed`: init, sampling, augmentation; the same seeds for "
        "every setting)",
        "- intervals: 95 % t-interval over seeds, mean ± t(0.975, n−1)·s/√n; paired differences "
        "take the difference per seed first, then the same interval",
        "- fusion-part params: SDTPS block (score MLP + aggregation) or HDM + ATM; train step: "
        "`engine.forward_backward` (forward, losses, backward, Adam step) on one batch, minimum "
        f"of {args.time_repeats} round-robin repeats, all settings in one process, 1 thread",
        "- selection recall: share of the cue cells among the kept tokens (test split, chance = "
        "keep ratio 0.5)",
        "",
        *table,
        "",
        f"Power criterion (every setting's mAP half-width <= {TARGET_HALF_WIDTH}): largest "
        f"half-width {worst:.2f} -> **{met}**.",
        "",
        *_paired_table(runs, names, catalog, baseline),
        "",
        *_recall_lines(runs, names, catalog),
        "",
        *_curves(runs, names),
        "",
        "<details><summary>per-run numbers (JSON)</summary>",
        "",
        "```json",
        json.dumps([{k: r[k] for k in ("setting", "seed", "train_s", "results", "loss")}
                    for r in runs])[:30000],
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)
