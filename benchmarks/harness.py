"""The one study harness: settings, planning, the worker pool, the JSON-lines resume, the
statistics and the report footer, shared by every study in ``benchmarks/``.

A study names its settings (:class:`Setting`: config overrides, an optional registered model
name, the eval features its runs are ranked with), writes one picklable function that trains
and ranks one ``(setting, seed)`` through the package's own build path
(:func:`train_and_rank`: ``torchreid_sdtps.build.build_all(cfg, hooks=...)`` then the engine's
``run``, exactly what ``tools/train.py`` trains with) and hands both to :func:`run_study`:

* **planning**: settings x seeds, seed-major (a study cut short has every setting for the seeds
  it finished), minus the runs already in the runs file;
* **resume**: every finished run is appended as one JSON line to the runs file (one write under
  a file lock, flushed); a run is reused when its setting, seed and key match, the key being a
  hash of the study's budget (data spec, epochs, batch...) and the setting's definition;
* **pool**: ``--jobs`` spawned worker processes, one torch thread each (``--threads`` split
  between them), or the calling process for one job;
* **statistics**: :func:`mean_std`, 95 % t-intervals (:func:`t_interval`) and paired differences
  by seed (:func:`paired`), and the JSON summary (:func:`json_summary`);
* **footer**: command, machine, date, wall time and runs trained now vs read back (:func:`footer`).

Per-epoch curves, losses and the best epoch come from an engine hook (:class:`RecordHook`),
never from replacing engine methods. Study-only models (the MoE reference, the zero-modality
wrapper) are registered as torchreid model names (``torchreid_sdtps.compat.register_model``, the
package's registration path; idempotent) so that ``build_all`` builds them by name; a study
passes its registration function as ``setup`` so that every worker registers them too.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import os.path as osp
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from _common import command_line, machine, now, write_section

import torchreid_sdtps
from torchreid_sdtps import build, config
from torchreid_sdtps.engine.hooks import EngineHook

__all__ = ["Setting", "spec_overrides", "RecordHook", "Trained",
           "train_and_rank", "metrics", "quiet", "run_key", "plan", "RunsFile", "pool_map",
           "Runs", "run_study", "mean_std", "t_interval", "values", "paired", "verdict",
           "json_summary", "footer", "study_parser", "parse_study_args", "start", "save_dir",
           "publish",
           "command_line", "machine", "now", "write_section"]

logger = logging.getLogger("harness")


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One trained configuration of a study.

    ``opts``: ``KEY VALUE`` config overrides; ``model``: a registered model name (``None``: the
    config's ``model.name``); ``evals``: the eval features (``model.test_feature`` values) its
    runs are ranked with, the first being the setting's main row; ``train``: False for a
    reference that is only built and ranked (the untrained model).
    """

    label: str
    opts: tuple[str, ...] = ()
    model: str | None = None
    evals: tuple[str, ...] = ("concat",)
    train: bool = True

    def overrides(self) -> list[str]:
        """The config overrides of this setting (its model name included)."""
        return [*self.opts, *(("model.name", self.model) if self.model else ())]


def spec_overrides(spec: Any) -> list[str]:
    """Config overrides that make ``synthetic_msreid`` generate ``spec`` at its own size."""
    out: list[str] = []
    for key, value in spec.to_dict().items():
        out += [f"synthetic.{key}", str(value)]
    return out + ["data.height", str(spec.height), "data.width", str(spec.width)]


# ----------------------------------------------------------------------------- training
class RecordHook(EngineHook):
    """Records what a study reads from training: the mean of ``loss_keys`` per epoch (the
    step summaries) and every evaluation's metrics of the first target with its epoch
    (1-based: the epochs trained so far), the curve."""

    def __init__(self, loss_keys: Sequence[str] = ("loss_x", "loss_t")) -> None:
        self.loss_keys = tuple(loss_keys)
        self.losses: dict[int, list[float]] = {}
        self.curve: list[dict[str, float]] = []

    def after_step(self, engine: Any, epoch: int, batch_idx: int, summary: dict[str, float]
                   ) -> None:
        self.losses.setdefault(epoch, []).append(sum(float(summary.get(k, 0.0))
                                                     for k in self.loss_keys))

    def after_eval(self, engine: Any, epoch: int, results: dict) -> None:
        res = next(iter(results.values())) if results else None
        if res is not None and "mAP" in res:
            self.curve.append({"epoch": int(epoch) + 1, **metrics(res)})

    def epoch_losses(self) -> list[float]:
        """Mean loss of each epoch, in epoch order (rounded to 4 digits)."""
        return [round(statistics.fmean(v), 4) for _, v in sorted(self.losses.items())]

    def best(self, metric: str = "mAP") -> dict[str, float] | None:
        """The evaluation with the highest ``metric`` (the first of equals), or None."""
        return max(reversed(self.curve), key=lambda r: r[metric], default=None)


@dataclass
class Trained:
    """What :func:`train_and_rank` hands back: metrics per eval feature, the model and engine
    (for parameter counts or further evaluation) and the seconds spent training."""

    results: dict[str, dict[str, float]]
    model: torch.nn.Module
    engine: Any
    train_s: float


def metrics(res: Mapping[str, Any]) -> dict[str, float]:
    """mAP and Rank-1 (and R5/R10 when present) as fractions, plus the token-selection recall,
    precision and chance recall when the engine measured them (cue ground truth)."""
    out = {k: float(res[k]) for k in ("mAP", "R1", "R5", "R10") if k in res}
    sel = res.get("selection")
    if sel:
        out.update(recall=float(sel["recall_mean"]), precision=float(sel["precision_mean"]),
                   chance_recall=float(sel["keep_ratio"]))
    return out


def quiet() -> contextlib.AbstractContextManager:
    """Send torchreid's prints (per-epoch lines, test banners) to a buffer."""
    return contextlib.redirect_stdout(io.StringIO())


def _test_kwargs(cfg: Any) -> dict[str, Any]:
    return {"dist_metric": cfg.test.dist_metric, "normalize_feature": cfg.test.normalize_feature,
            "ranks": list(cfg.test.ranks)}


def train_and_rank(cfg: Any, evals: Sequence[str] = ("concat",), hooks: Sequence[EngineHook] = (),
                   train: bool = True, after: Callable[[Any, Any], Any] | None = None
                   ) -> Trained:
    """Build ``cfg`` with ``build_all`` (checkpoint meta, option checks, hooks), train it with
    the engine's ``run`` (``train=False``: build only) and rank it with each feature of
    ``evals`` (set as ``model.test_feature``; the final test of ``run`` is reused for the one
    the model trained with; empty: that one only). ``after(model, engine)`` runs last, before
    the engine is closed. The hooks see training and its tests, not the extra rankings.
    """
    start = time.time()
    _, model, _, _, engine = build.build_all(cfg, hooks=list(hooks))
    try:
        if train:
            run_kwargs = config.engine_run_kwargs(cfg)
            run_kwargs.pop("test_only")
            engine.run(**run_kwargs)  # trains, then torchreid's final test
        train_s = time.time() - start
        final = dict(engine.last_results) if train else {}
        trained_with = model.test_feature
        evals = tuple(evals) or (trained_with,)
        results = {}
        hooks_of_training = list(engine.hooks)
        engine.hooks[:] = []
        for feature in evals:
            if feature == trained_with and final:
                results[feature] = metrics(next(iter(final.values())))
                continue
            model.test_feature = feature
            results[feature] = metrics(engine.evaluate(**_test_kwargs(cfg)))
        model.test_feature = trained_with
        engine.hooks[:] = hooks_of_training
        if after is not None:
            after(model, engine)
    finally:
        if getattr(engine, "writer", None) is not None:  # before its folder is removed
            engine.writer.close()
    return Trained(results, model, engine, train_s)


# ----------------------------------------------------------------------------- planning, resume
def run_key(budget: Mapping[str, Any], setting: Setting) -> str:
    """What a run's numbers depend on besides its seed: the study's budget and the setting's
    definition, hashed (16 hex digits)."""
    blob = json.dumps({"budget": budget, "setting": dataclasses.asdict(setting)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan(names: Sequence[str], seeds: Sequence[int], done: Iterable[tuple[str, int]] = ()
         ) -> list[tuple[str, int]]:
    """Every ``(setting, seed)`` not in ``done``, seed-major."""
    done = set(done)
    return [(n, s) for s in seeds for n in names if (n, s) not in done]


class RunsFile:
    """A JSON-lines file of finished runs: appended one line at a time (one write under a
    file lock, flushed and synced), read back skipping a torn last line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """Every complete record (a line that does not parse is skipped with a warning)."""
        if not self.path or not osp.isfile(self.path):
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("%s:%d: not a JSON record (an interrupted write?); skipped",
                                   self.path, i)
        return out

    def append(self, record: Mapping[str, Any]) -> None:
        """Add ``record`` as one line."""
        from filelock import FileLock

        os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
        line = (json.dumps(record) + "\n").encode("utf-8")
        with FileLock(self.path + ".lock"):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


# ----------------------------------------------------------------------------- pool
def _init_worker(threads: int, setup: Callable[[], Any] | None) -> None:
    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torchreid_sdtps.load_plugins()
    if setup is not None:
        setup()


def _call(fn: Callable[..., dict[str, Any]], item: tuple[str, int]) -> dict[str, Any]:
    start = time.time()
    record = fn(*item)
    return {"setting": item[0], "seed": item[1], **record,
            "wall_s": round(time.time() - start, 1)}


def pool_map(fn: Callable[..., dict[str, Any]], items: Sequence[tuple[str, int]], jobs: int = 1,
             threads: int = 0, setup: Callable[[], Any] | None = None) -> Iterator[dict[str, Any]]:
    """``fn(setting, seed)`` for each item, in ``jobs`` spawned processes (each with
    ``threads // jobs`` torch threads, at least 1; one thread when ``threads`` is 0) or, for one
    job, here; yields each record with ``setting``, ``seed`` and ``wall_s`` as it finishes.
    ``fn`` and ``setup`` (run once per worker, e.g. model registration) must be picklable."""
    call = functools.partial(_call, fn)
    if jobs <= 1 or len(items) <= 1:
        yield from map(call, items)
        return
    per_worker = max(1, threads // jobs) if threads else 1
    pool = multiprocessing.get_context("spawn").Pool(jobs, _init_worker, (per_worker, setup))
    try:
        yield from pool.imap_unordered(call, items)
    finally:
        pool.terminate()


@dataclass
class Runs:
    """A study's runs: ``runs`` (setting order, then seed), how many were trained by this
    invocation (``now``) and read back from the runs file (``read_back``), and the wall time."""

    runs: list[dict[str, Any]]
    now: int
    read_back: int
    wall_s: float


def run_study(fn: Callable[..., dict[str, Any]], settings: Mapping[str, Setting],
              names: Sequence[str], seeds: Sequence[int], budget: Mapping[str, Any], *,
              runs_file: str = "", resume: bool = True, jobs: int = 1, threads: int = 0,
              setup: Callable[[], Any] | None = None,
              progress: Callable[..., None] = print) -> Runs:
    """Run every ``(setting, seed)`` of ``names`` x ``seeds`` with ``fn`` (see
    :func:`pool_map`), reusing the matching runs of ``runs_file`` (``resume``) and appending each
    new one to it with its key (:func:`run_key`)."""
    start = time.time()
    keys = {n: run_key(budget, settings[n]) for n in names}
    runs: list[dict[str, Any]] = []
    store = RunsFile(runs_file) if runs_file else None
    if store is not None and resume and osp.isfile(runs_file):
        stored = store.read()
        wanted = set(seeds)
        runs = list({(r["setting"], r["seed"]): r for r in stored
                     if r.get("setting") in keys and r.get("key") == keys[r["setting"]]
                     and r.get("seed") in wanted}.values())
        progress(f"resuming: {len(runs)} finished runs read from {runs_file}"
                 + (f" ({len(stored) - len(runs)} others of other settings, seeds or budget "
                    "ignored)" if len(stored) > len(runs) else ""), flush=True)
    read_back = len(runs)
    todo = plan(names, seeds, ((r["setting"], r["seed"]) for r in runs))
    total = read_back + len(todo)
    for i, record in enumerate(pool_map(fn, todo, jobs, threads, setup), read_back + 1):
        record["key"] = keys[record["setting"]]
        runs.append(record)
        if store is not None:
            store.append(record)
        progress(f"[{i}/{total}] {_progress_line(record)}  "
                 f"(elapsed {(time.time() - start) / 60:.1f} min)", flush=True)
    order = {n: i for i, n in enumerate(settings)}
    runs.sort(key=lambda r: (order.get(r["setting"], len(order)), r["seed"]))
    return Runs(runs, len(todo), read_back, time.time() - start)


def _progress_line(r: Mapping[str, Any]) -> str:
    res = "  ".join(f"{f}: mAP {100 * v['mAP']:.1f} R1 {100 * v['R1']:.1f}"
                    + (f" recall {100 * v['recall']:.1f}" if "recall" in v else "")
                    for f, v in (r.get("results") or {}).items()
                    if isinstance(v, Mapping) and "mAP" in v and "R1" in v)
    return f"{r['setting']:<12} seed {r['seed']} {r.get('wall_s', 0):6.1f}s  {res}"


# ----------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided t-interval (nan half-width for one value)."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan")
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / n ** 0.5


def values(runs: Iterable[Mapping[str, Any]], setting: str, feature: str, metric: str = "mAP",
           scale: float = 100.0) -> dict[int, float]:
    """``{seed: metric x scale}`` of ``setting`` ranked with ``feature``."""
    return {r["seed"]: scale * r["results"][feature][metric] for r in runs
            if r["setting"] == setting and feature in r.get("results", {})
            and metric in r["results"][feature]}


def paired(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95
           ) -> tuple[float, float, int]:
    """Mean and t-interval half-width of ``a - b`` over the seeds both have, and their count
    (nan, nan, 0 without common seeds)."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not diffs:
        return float("nan"), float("nan"), 0
    return (*t_interval(diffs, level), len(diffs))


def verdict(mean: float, half: float) -> str:
    """Reading of a paired difference: its 95 % interval above, below or around 0."""
    if math.isnan(half):
        return "one seed: no interval"
    if mean - half > 0:
        return "higher (interval above 0)"
    if mean + half < 0:
        return "lower (interval below 0)"
    return "no difference detected (interval contains 0)"


def json_summary(runs: Sequence[Mapping[str, Any]], settings: Mapping[str, Setting],
                 pairs: Iterable[tuple[str, str]] = (), metric: str = "mAP") -> dict[str, Any]:
    """``{"settings": {name: {"seeds", metric, "half_width"}}, "paired": {"a - b": {"seeds",
    "mean", "low", "high"}}}`` on each setting's main feature (points, 95 % t-intervals)."""
    main = {n: values(runs, n, s.evals[0], metric) for n, s in settings.items()}
    out: dict[str, Any] = {"settings": {}, "paired": {}}
    for name, v in main.items():
        if v:
            mean, half = t_interval(list(v.values()))
            out["settings"][name] = {"seeds": len(v), metric: mean, "half_width": half}
    for a, b in pairs:
        mean, half, n = paired(main.get(a, {}), main.get(b, {}))
        if n:
            out["paired"][f"{a} - {b}"] = {"seeds": n, "mean": mean, "low": mean - half,
                                           "high": mean + half}
    return out


# ----------------------------------------------------------------------------- report, flags
def footer(command: str, result: Runs, jobs: int, device: str = "cpu") -> list[str]:
    """The report lines every study starts with: command, machine, date and this invocation's
    wall time with the runs trained now and read back from the runs file."""
    return [f"- command: `{command}`", f"- machine: {machine(device)}",
            f"- date: {now()}; this invocation {result.wall_s / 60:.1f} min wall with {jobs} "
            f"parallel job(s) ({result.now} runs now, {result.read_back} read back from "
            "`--runs-file`)"]


def study_parser(description: str, settings: Mapping[str, Setting], *,
                 default_settings: Sequence[str] | None = None, epochs: int = 20,
                 runs_file: str = "", root: str = "reid-data") -> argparse.ArgumentParser:
    """The flags every synthetic study shares; the keyword arguments are where they differ."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per setting")
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs per run")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--num-instances", type=int, default=4, help="images per id in a batch")
    parser.add_argument("--settings", default=",".join(default_settings or settings),
                        help=f"comma-separated subset of {list(settings)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in all (0 = torch's default for one job, 1 per job "
                             "otherwise), split between the jobs")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs in parallel, each in its own process (2 x 1 thread uses 2 "
                             "cores better than 1 x 2 threads for this small model)")
    parser.add_argument("--root", default=root, help="data root (the data set is generated there)")
    parser.add_argument("--out", default="", help="markdown file whose study section is (re)written")
    parser.add_argument("--runs-file", default=runs_file,
                        help="JSON-lines file: every finished run is appended; runs of the same "
                             "budget found there are reused, so an interrupted study resumes "
                             "('' = none)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data, 1 epoch, 1 seed: seconds (for the tests)")
    return parser


def parse_study_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                     settings: Mapping[str, Setting]) -> argparse.Namespace:
    """Parse ``argv`` with a :func:`study_parser`, check the settings and the counts, and
    shrink the budget for ``--smoke``."""
    args = parser.parse_args(argv)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in settings]
    if unknown or not args.settings:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(settings)}")
    if args.smoke:
        args.epochs, args.batch, args.num_instances, args.jobs = 1, 8, 2, 1
        args.seeds = min(args.seeds, 1)
    if args.seeds < 1 or args.epochs < 1 or args.jobs < 1:
        parser.error("--seeds, --epochs and --jobs must be >= 1")
    return args


def start(args: argparse.Namespace) -> None:
    """What a study's ``main`` does first: threads, logging and the plugins."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torchreid_sdtps.load_plugins()


def save_dir() -> contextlib.AbstractContextManager[str]:
    """A throw-away run folder (a study keeps the numbers, not the checkpoints)."""
    return tempfile.TemporaryDirectory(prefix="sdtps_study_")


def publish(text: str, out: str, begin: str, end: str) -> None:
    """Print a study's report and (re)write its marked section of ``out`` (when given)."""
    print(text)
    if out:
        write_section(out, text, begin, end)
        print(f"\nwritten: {out}")
