"""The markdown section of ``benchmarks/fusion_study.py``: the main table (shipped feature,
``ori``, token branch alone, recall, cost), the paired differences, the targets of issue 23,
per-seed recall, the learning curves of seed 0 and the per-run numbers."""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import harness

__all__ = ["render", "readme_table", "confirmation_lines", "TARGET_HALF_WIDTH", "SEEDS_RULE"]

#: issue 23: every setting's mAP 95 % half-width at most this (points)
TARGET_HALF_WIDTH = 1.0
#: the seeds the committed rules need of each head they compare
SEEDS_RULE = 16


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "—"
    mean, half = harness.t_interval(list(values))
    return f"{mean:.1f} ± {half:.1f}" if not math.isnan(half) else f"{mean:.1f}"


def _main_table(runs: Sequence[Mapping[str, Any]], names: Sequence[str], times: dict[str, float],
                catalog: Mapping[str, Any], branch: Mapping[str, str]) -> tuple[list[str], float]:
    lines = ["| setting | seeds | mAP, shipped feature (%) | Rank-1 (%) | mAP, `ori` (%) | "
             "mAP, branch alone (%) | selection recall (%) | fusion-part params | "
             "train step (ms, min) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    worst = 0.0
    for name in names:
        rs = [r for r in runs if r["setting"] == name]
        if not rs:
            continue
        main = catalog[name].evals[0]
        maps = list(harness.values(runs, name, main).values())
        worst = max(worst, harness.t_interval(maps)[1]) if len(maps) > 1 else math.inf
        r1 = harness.values(runs, name, main, "R1").values()
        ori = harness.values(runs, name, "ori").values() if main != "ori" else []
        br = harness.values(runs, name, branch[name]).values() if name in branch else []
        recall = harness.values(runs, name, main, "recall").values()
        step = f"{1000 * times[name]:.0f}" if name in times else "—"
        lines.append(f"| {catalog[name].label} (`{name}`, `{main}`) | {len(maps)} | {_fmt(maps)} "
                     f"| {_fmt(list(r1))} | {_fmt(list(ori))} | {_fmt(list(br))} | "
                     f"{_fmt(list(recall))} | {rs[0]['fusion_params']:,} | {step} |")
    return lines, worst


def _paired_table(runs: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]],
                  catalog: Mapping[str, Any]) -> list[str]:
    lines = ["| difference (same seed, shipped features) | seeds | Δ mAP (points) | "
             "95 % interval | reading |", "| --- | --- | --- | --- | --- |"]
    for a, b in pairs:
        if a not in catalog or b not in catalog:
            continue
        mean, half, n = harness.paired(harness.values(runs, a, catalog[a].evals[0]),
                                       harness.values(runs, b, catalog[b].evals[0]))
        if n:
            lines.append(f"| `{a}` − `{b}` | {n} | {mean:+.1f} | [{mean - half:+.1f}, "
                         f"{mean + half:+.1f}] | {harness.verdict(mean, half)} |")
    return lines


def _recall_lines(runs: Sequence[Mapping[str, Any]], names: Sequence[str],
                  catalog: Mapping[str, Any], controls: Collection[str]) -> list[str]:
    lines = []
    for name in names:
        recall = harness.values(runs, name, catalog[name].evals[0], "recall")
        if not recall or name in controls:
            continue
        seeds = sorted(recall)
        lines.append(f"- `{name}`: selection recall per seed (%) "
                     f"{', '.join(f'{recall[s]:.0f}' for s in seeds)}; seeds at >= 80 %: "
                     f"{sum(recall[s] >= 80 for s in seeds)} of {len(seeds)}")
    return lines


def _curves(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    seed0 = {r["setting"]: r for r in runs if r["seed"] == 0 and r.get("curve")}
    longest = max((len(r["curve"]) for r in seed0.values()), default=0)
    # the settings tested after every epoch (the others hold only their final test)
    seed0 = {n: r for n, r in seed0.items() if len(r["curve"]) == longest}
    shown = [n for n in names if n in seed0]
    if not shown:
        return []
    epochs = max(len(seed0[n]["curve"]) for n in shown)
    lines = ["Learning curves, seed 0 (test mAP % after each epoch, shipped feature / mean "
             "training ID + triplet loss of the epoch):", "",
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


def _interval(d: Mapping[str, float]) -> str:
    if math.isnan(d["low"]):  # one seed: no interval
        return f"{d['mean']:+.1f}"
    return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def confirmation_lines(confirm: Mapping[str, Any] | None, patches: int) -> list[str]:
    """The sign-agreement table of a confirmation (``fusion_study.confirmation``)."""
    if not confirm:
        return []
    n0 = confirm["primary_regime"]["patches"]
    lines = [f"Confirmation: the paired differences at N = {patches} against the primary study "
             f"at N = {n0} (issue 23: they agree in sign):", "",
             f"| difference | N = {n0} | N = {patches} | same sign |", "| --- | --- | --- | --- |"]
    for key, d in confirm["pairs"].items():
        a, b = key.split(" - ")
        lines.append(f"| `{a}` − `{b}` | {_interval(d['primary'])} | "
                     f"{_interval(d['confirmation'])} | {'yes' if d['agree'] else '**no**'} |")
    return lines


def render(args: argparse.Namespace, result: harness.Runs, times: dict[str, float],
           command: str, *, branch: Mapping[str, str], pairs: Sequence[tuple[str, str]],
           controls: Collection[str], shipped: tuple[str, bool],
           confirm: Mapping[str, Any] | None = None) -> str:
    """The whole section. ``branch``: each setting's token-branch feature; ``pairs``: the paired
    differences shown; ``controls``: the selection-free settings (no recall line);
    ``shipped``: the committed rules' outcome, (setting, applied); ``confirm``: for a
    confirmation run, its sign agreement with the primary study."""
    catalog, runs, spec = args.catalog, result.runs, args.spec
    names = [n for n in catalog if n in args.settings]
    grid = spec.grid
    n = grid[0] * grid[1]
    table, worst = _main_table(runs, names, times, catalog, branch)
    name, applied = shipped
    train_s = [r["train_s"] for r in runs]
    lines = [
        f"### SDTPS at N = {n}: selection vs no selection vs keep-all vs HDM+ATM "
        "(`benchmarks/fusion_study.py`)",
        "",
        *harness.footer(command, result, args.jobs),
        f"- median {statistics.median(train_s) if train_s else 0:.0f} s per run",
        f"- data: `synthetic_msreid`, `cue=\"localized\"`, `distractors={spec.distractors}`: "
        f"{spec.num_train_ids} train / {spec.num_test_ids} test ids, {spec.num_cameras} cameras "
        f"x {spec.images_per_camera} images, {spec.height}x{spec.width} at patch "
        f"{args.patch_size} = {grid[0]}x{grid[1]} = {n} patches; per modality the framed cue "
        f"(1x2 cells), {spec.distractors} other identit{'y' if spec.distractors == 1 else 'ies'}"
        f" of the split, clutter in every other cell; data seed {spec.seed}",
        f"- model / budget: `sdtps_vit_tiny` from random init, {args.epochs} epochs, batch "
        f"{args.batch} ({args.num_instances} images per id), the demo's Adam and schedule; "
        f"seeds {sorted({r['seed'] for r in runs})} (the same for every setting)",
        "- intervals: 95 % t-intervals over seeds; paired differences per seed first",
        "- selection recall: share of the cue cells among the kept tokens, test split (chance = "
        "keep ratio 0.5); train step: `engine.forward_backward` on one batch, minimum of "
        f"{args.time_repeats} round-robin repeats in one process",
        (f"- confirmation of the primary study (N = {confirm['primary_regime']['patches']}), "
         f"whose committed rule ships `{name}`" if confirm is not None else
         f"- shipped head by the committed rule: `{name}`")
        + ("" if applied else f" (rules not applied yet: fewer than {SEEDS_RULE} "
           "seeds of the heads they compare; the default stays the previous head's)"),
        "",
        *table,
        "",
        f"Power (every setting's mAP half-width <= {TARGET_HALF_WIDTH}): largest "
        f"{worst:.2f} -> **{'met' if worst <= TARGET_HALF_WIDTH else 'NOT met'}**.",
        "",
        *_paired_table(runs, pairs, {k: catalog[k] for k in names}),
        "",
        *_recall_lines(runs, names, catalog, controls),
        "",
        *confirmation_lines(confirm, n),
        "",
        *_curves(runs, names),
        "",
        "<details><summary>per-run numbers (JSON)</summary>",
        "",
        "```json",
        json.dumps([{k: r[k] for k in ("setting", "seed", "train_s", "results")}
                    for r in runs])[:30000],
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def readme_table(args: argparse.Namespace, stats: Mapping[str, Any], baseline: str,
                 reference: str, shipped: tuple[str, bool],
                 confirm: Mapping[str, Any] | None = None) -> str:
    """The README's short table of the study (``--readme``): each setting's shipped-feature mAP
    and its paired differences to ``baseline`` (no selection) and ``reference`` (HDM + ATM),
    from :func:`harness.json_summary`-shaped ``stats`` (points, 95 % t-intervals); for a
    confirmation, the sign agreement with the primary study below it."""
    grid = args.spec.grid
    settings = stats["settings"]
    seeds = max((v["seeds"] for v in settings.values()), default=0)
    name, applied = shipped
    lines = [f"Fusion study at N = {grid[0] * grid[1]} patches per modality "
             f"({args.spec.height}×{args.spec.width} at patch {args.patch_size}; up to {seeds} of "
             f"{args.seeds_required} seeds; "
             + ("confirmation of the primary study; " if confirm is not None else "")
             + f"shipped head `{name}`"
             + ("" if applied else ", rules not applied yet") + "; written by "
             "`benchmarks/fusion_study.py --readme README.md`, details in "
             "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)):", "",
             "| setting | what it is | seeds | mAP (%) | − no selection (paired) | "
             "− HDM+ATM (paired) |", "| --- | --- | --- | --- | --- | --- |"]

    def diff(a: str, b: str) -> str:
        d = stats["paired"].get(f"{a} - {b}")
        return "—" if a == b or not d else _interval(d)

    for setting, v in settings.items():
        half = v["half_width"]
        value = f"{v['mAP']:.1f}" + ("" if math.isnan(half) else f" ± {half:.1f}")
        label = args.catalog[setting].label if setting in args.catalog else ""
        lines.append(f"| `{setting}` | {label} | {v['seeds']} | {value} | "
                     f"{diff(setting, baseline)} | {diff(setting, reference)} |")
    if confirm is not None:
        lines += ["", *confirmation_lines(confirm, grid[0] * grid[1])]
    return "\n".join(lines)
