"""The logic behind ``tools/train.py`` and ``tools/test.py`` (they are thin wrappers).

Everything is built *by registered name*: the data sets through torchreid's
``ImageDataManager``, the model from torchreid's model registry, the engine from the plugin's
engine registry (``plugins.get_engine``), after :func:`torchreid_sdtps.load_plugins` has
registered every installed entry point. An unknown name lists the registered ones.

A run is seeded (torchreid's ``set_random_seed``; the data loaders then draw the same
batches), writes a text log (a tee of stdout like torchreid's ``Logger``, plus the log
records) and tensorboard scalars to ``data.save_dir``, saves torchreid-format checkpoints at each
evaluation and at the end, and ``model.resume`` / ``--resume`` continues from one with
optimizer, scheduler and RNG state, so a resumed run ends exactly where the uninterrupted one
does. Warm-up schedules (torchreid has none) are :func:`build_lr_scheduler`.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import inspect
import json
import logging
import math
import os
import os.path as osp
import re
import sys
import time
from typing import Any, Iterator, Optional, Sequence

import torch

from .. import compat, config, plugins
from ..config import ConfigError
from ..io import atomic_path
from .sdtps_engine import format_table, rank_targets, rng_fork

__all__ = [
    "WarmupLambda", "WarmupLR", "build_lr_scheduler", "build_datamanager", "build_model",
    "build_engine",
    "num_camera_labels", "train", "test", "main_train", "main_test", "cli",
    "latest_checkpoint", "SCHEDULERS",
]

logger = logging.getLogger(__name__)

SCHEDULERS: tuple[str, ...] = ("single_step", "multi_step", "cosine", "warmup_single_step",
                               "warmup_multi_step", "warmup_cosine")
SYNTHETIC = "synthetic_msreid"


# ----------------------------------------------------------------------------- schedules

class WarmupLambda:
    """Per-epoch lr factor: linear warm-up, then step / multi-step / cosine decay.

    Warm-up: ``warmup_factor -> 1`` linearly over ``warmup_epoch`` epochs (epoch 0 uses
    ``warmup_factor``). Then ``single_step``: ``gamma ** (epoch // stepsize[-1])``;
    ``multi_step``: ``gamma ** #{milestones <= epoch}`` (absolute epochs, like torchreid's);
    ``cosine``: from 1 down to ``min_lr_factor`` over the remaining epochs.
    """

    def __init__(self, kind: str, max_epoch: int, warmup_epoch: int = 0,
                 warmup_factor: float = 0.01, stepsize: Sequence[int] = (),
                 gamma: float = 0.1, min_lr_factor: float = 0.0) -> None:
        if kind not in ("single_step", "multi_step", "cosine"):
            raise ValueError(f"unknown schedule '{kind}'; expected single_step, multi_step or "
                             "cosine")
        if warmup_epoch < 0 or not 0 < warmup_factor <= 1:
            raise ValueError(f"warm-up needs warmup_epoch >= 0 and 0 < warmup_factor <= 1; got "
                             f"{warmup_epoch}, {warmup_factor}")
        steps = [int(s) for s in (stepsize if isinstance(stepsize, (list, tuple)) else [stepsize])]
        if kind != "cosine" and (not steps or min(steps) <= 0):
            raise ValueError(f"{kind} needs positive train.stepsize; got {list(stepsize)}")
        self.kind = kind
        self.max_epoch = int(max_epoch)
        self.warmup_epoch = int(warmup_epoch)
        self.warmup_factor = float(warmup_factor)
        self.stepsize = steps
        self.gamma = float(gamma)
        self.min_lr_factor = float(min_lr_factor)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epoch:
            return self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epoch
        if self.kind == "single_step":
            return self.gamma ** (epoch // self.stepsize[-1])
        if self.kind == "multi_step":
            return self.gamma ** sum(epoch >= s for s in self.stepsize)
        span = max(1, self.max_epoch - self.warmup_epoch)
        progress = min(1.0, (epoch - self.warmup_epoch) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_lr_factor + (1 - self.min_lr_factor) * cosine


class WarmupLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a :class:`WarmupLambda` whose *schedule comes from the config*.

    The checkpoint keeps the position (``last_epoch``, base lrs), not the schedule's
    parameters: after ``load_state_dict`` the lr is recomputed from this object's schedule, so
    a run resumed with a longer ``max_epoch`` follows the new schedule.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict, lr_lambdas=[None] * len(self.lr_lambdas))
        super().load_state_dict(state)
        for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler: str = "warmup_cosine",
                       stepsize: Any = (30, 40), gamma: float = 0.1, max_epoch: int = 50,
                       warmup_epoch: int = 0, warmup_factor: float = 0.01,
                       min_lr_factor: float = 0.0) -> Any:
    """torchreid's ``build_lr_scheduler`` for its own names without warm-up; otherwise a
    :class:`WarmupLR` (stepped once per epoch, as torchreid's are)."""
    if lr_scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown train.lr_scheduler '{lr_scheduler}'; expected one of "
                          f"{list(SCHEDULERS)}")
    kind = lr_scheduler[len("warmup_"):] if lr_scheduler.startswith("warmup_") else lr_scheduler
    steps = list(stepsize) if isinstance(stepsize, (list, tuple)) else [int(stepsize)]
    if warmup_epoch == 0 and kind == lr_scheduler and min_lr_factor == 0:
        step_arg: Any = steps[-1] if kind == "single_step" else steps
        return compat.optim().build_lr_scheduler(optimizer, lr_scheduler=kind,
                                                 stepsize=step_arg, gamma=gamma,
                                                 max_epoch=max_epoch)
    return WarmupLR(
        optimizer, WarmupLambda(kind, max_epoch, warmup_epoch, warmup_factor, steps, gamma,
                                min_lr_factor))


# ----------------------------------------------------------------------------- builders

def _accepted(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` restricted to what ``fn`` accepts (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def check_names(cfg: Any) -> None:
    """Raise ``KeyError`` naming the registered choices for an unknown data set, model or
    engine name (after ``load_plugins()``)."""
    datasets = plugins.dataset_names()
    for key in ("sources", "targets"):
        for name in cfg.data[key]:
            if name not in datasets:
                raise KeyError(f"unknown dataset '{name}' (data.{key}); registered datasets: "
                               f"{datasets}")
    models = plugins.model_names()
    if cfg.model.name not in models:
        raise KeyError(f"unknown model '{cfg.model.name}' (model.name); registered models: "
                       f"{models}")
    plugins.get_engine(cfg.sdtps.engine)  # KeyError listing the registered engines


def build_datamanager(cfg: Any) -> Any:
    """torchreid's ``ImageDataManager`` for ``cfg`` (``synthetic_msreid`` is generated from
    ``cfg.synthetic``)."""
    dm_cls = compat.data().ImageDataManager
    kwargs = config.imagedata_kwargs(cfg)
    params = inspect.signature(dm_cls.__init__).parameters
    if "use_gpu" not in params and "device" in params:  # newer torchreid takes device=
        gpu = kwargs.pop("use_gpu") and torch.cuda.is_available()
        kwargs["device"] = "cuda" if gpu else "cpu"
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if SYNTHETIC in list(cfg.data.sources) + list(cfg.data.targets):
        from ..data.synthetic import using_spec

        ctx = using_spec(config.synthetic_spec(cfg))
    with ctx:
        return dm_cls(**_accepted(dm_cls.__init__, kwargs))


def num_camera_labels(datamanager: Any) -> int:
    """Size of the camera embedding: ``1 + max cam_label`` over train, query and gallery."""
    sets = [datamanager.train_loader.dataset]
    for loaders in datamanager.test_loader.values():
        sets += [loaders["query"].dataset, loaders["gallery"].dataset]
    counts = [int(getattr(d, "num_cam_labels", 0) or 0) for d in sets]
    return max(counts + [int(datamanager.num_train_cams)])


def build_model(cfg: Any, datamanager: Any) -> torch.nn.Module:
    """The registered model ``cfg.model.name`` with the ``sdtps`` options it accepts."""
    factory = compat.model_factory()[cfg.model.name]
    kwargs = config.model_kwargs(cfg, num_cameras=num_camera_labels(datamanager))
    model = factory(num_classes=datamanager.num_train_pids, **_accepted(factory, kwargs))
    if cfg.model.load_weights:
        if not osp.isfile(cfg.model.load_weights):
            raise FileNotFoundError(f"model.load_weights: no file '{cfg.model.load_weights}'")
        with compat.checkpoint_loading():
            compat.utils().load_pretrained_weights(model, cfg.model.load_weights)
    if _use_gpu(cfg):
        model = model.cuda()
    return model


def _use_gpu(cfg: Any) -> bool:
    return bool(cfg.use_gpu) and torch.cuda.is_available()


def build_engine(cfg: Any, datamanager: Any, model: torch.nn.Module, optimizer: Any,
                 scheduler: Any) -> Any:
    """The registered engine ``cfg.sdtps.engine`` with the options its constructor accepts."""
    engine_cls = plugins.get_engine(cfg.sdtps.engine)
    kwargs = dict(config.engine_kwargs(cfg), optimizer=optimizer, scheduler=scheduler)
    engine = engine_cls(datamanager, model, **_accepted(engine_cls.__init__, kwargs))
    if hasattr(engine, "checkpoint_meta"):  # checkpoints then rebuild the model on their own
        from ..utils.feature_extractor import checkpoint_meta

        engine.checkpoint_meta = checkpoint_meta(cfg, datamanager.num_train_pids,
                                                 num_camera_labels(datamanager))
    return engine


def build_all(cfg: Any) -> tuple[Any, torch.nn.Module, Any, Any, Any]:
    """Data manager, model, optimizer, scheduler and engine of ``cfg`` (seeded first)."""
    compat.utils().set_random_seed(cfg.train.seed)
    check_names(cfg)
    dm = build_datamanager(cfg)
    model = build_model(cfg, dm)
    optimizer = compat.optim().build_optimizer(model, **config.optimizer_kwargs(cfg))
    scheduler = build_lr_scheduler(optimizer, **config.lr_scheduler_kwargs(cfg))
    engine = build_engine(cfg, dm, model, optimizer, scheduler)
    return dm, model, optimizer, scheduler, engine


# ----------------------------------------------------------------------------- evaluation

@contextlib.contextmanager
def _swapped_model(engine: Any, model: torch.nn.Module) -> Iterator[None]:
    old, old_reg = engine.model, engine._models.get("model")
    engine.model, engine._models["model"] = model, model
    try:
        yield
    finally:
        engine.model, engine._models["model"] = old, old_reg


def _test_kwargs(cfg: Any) -> dict[str, Any]:
    return {"dist_metric": cfg.test.dist_metric, "normalize_feature": cfg.test.normalize_feature,
            "rerank": cfg.test.rerank, "ranks": list(cfg.test.ranks)}


def evaluate(engine: Any, cfg: Any) -> dict[str, dict[str, Any]]:
    """Rank every target with ``engine``; ``{target: {"mAP", "R1", "R5", "R10", ...}}``."""
    if hasattr(engine, "last_results"):
        engine.test(**_test_kwargs(cfg), save_dir=cfg.data.save_dir)
        results = engine.last_results
    else:  # torchreid's stock engines (or a third party's) only print their metrics
        results = rank_targets(engine, **_test_kwargs(cfg))
    return {k: {m: v for m, v in r.items() if m != "cmc"} for k, r in results.items()}


def untrained_results(cfg: Any, engine: Any, datamanager: Any) -> dict[str, dict[str, Any]]:
    """Rank a freshly initialised model of the same architecture (chance level), leaving the
    global RNG as it was."""
    with rng_fork():
        compat.utils().set_random_seed(cfg.train.seed)
        fresh_cfg = cfg.clone()
        fresh_cfg.defrost()
        fresh_cfg.model.load_weights = ""
        fresh = build_model(fresh_cfg, datamanager)
        with _swapped_model(engine, fresh):
            return evaluate(engine, cfg)


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """The highest-epoch ``model.pth.tar-<epoch>`` under ``<save_dir>/model``, if any."""
    paths = glob.glob(osp.join(save_dir, "model", "model.pth.tar-*"))
    epochs = [(int(m.group(1)), p) for p in paths
              if (m := re.search(r"model\.pth\.tar-(\d+)$", p))]
    return max(epochs)[1] if epochs else None


def _write_json(path: str, obj: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)


# ----------------------------------------------------------------------------- logging

class _Tee:
    """stdout tee into a log file (like torchreid's ``Logger``, which however closes the
    console on ``close()``/garbage collection: fatal for in-process callers)."""

    def __init__(self, console: Any, path: str) -> None:
        os.makedirs(osp.dirname(path) or ".", exist_ok=True)
        self.console = console
        self.file = open(path, "w", encoding="utf-8")

    def write(self, msg: str) -> int:
        self.console.write(msg)
        if not self.file.closed:
            self.file.write(msg)
        return len(msg)

    def flush(self) -> None:
        self.console.flush()
        if not self.file.closed:
            self.file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def run_logging(save_dir: str, name: str) -> Iterator[str]:
    """Tee stdout (torchreid's progress prints) into ``<save_dir>/<name>.log-<time>`` and send
    log records to it as well; undone on exit. Yields the log path."""
    path = osp.join(save_dir, f"{name}.log-" + time.strftime("%Y-%m-%d-%H-%M-%S"))
    old_stdout = sys.stdout
    tee = _Tee(old_stdout, path)
    sys.stdout = tee
    handler = logging.StreamHandler(tee)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        sys.stdout = old_stdout
        tee.close()


# ----------------------------------------------------------------------------- train / test

def _results_table(rows: dict[str, dict[str, Any]], title: str) -> str:
    return format_table({k: {m: v for m, v in r.items() if m == "mAP" or m.startswith("R")}
                         for k, r in rows.items()}, title=title, first="model")


def train(cfg: Any) -> dict[str, Any]:
    """Train (or resume), rank and checkpoint as ``cfg`` says; returns the results summary
    (also written to ``<save_dir>/results.json``)."""
    if cfg.test.evaluate:
        return test(cfg)
    start = time.time()
    dm, model, _, _, engine = build_all(cfg)
    start_epoch = int(cfg.train.start_epoch)
    if cfg.model.resume:
        if not osp.isfile(cfg.model.resume):
            raise FileNotFoundError(f"model.resume: no checkpoint '{cfg.model.resume}'")
        if hasattr(engine, "resume"):
            start_epoch = engine.resume(cfg.model.resume)
        else:
            with compat.checkpoint_loading():
                start_epoch = compat.utils().resume_from_checkpoint(
                    cfg.model.resume, model, engine.optimizer, engine.scheduler)
    run_kwargs = dict(config.engine_run_kwargs(cfg), start_epoch=start_epoch)
    run_kwargs.pop("test_only")
    if start_epoch >= cfg.train.max_epoch:
        raise ConfigError(f"nothing to train: the checkpoint ends at epoch {start_epoch} and "
                          f"train.max_epoch is {cfg.train.max_epoch}")
    engine.run(**run_kwargs)
    target = list(cfg.data.targets)[0]
    checkpoint = getattr(engine, "last_checkpoint", None) or latest_checkpoint(cfg.data.save_dir)
    summary: dict[str, Any] = {
        "model": cfg.model.name, "engine": cfg.sdtps.engine, "epochs": cfg.train.max_epoch,
        "start_epoch": start_epoch, "checkpoint": checkpoint,
        "trained": {k: {m: v for m, v in r.items() if m != "cmc"}
                    for k, r in getattr(engine, "last_results", {}).items()},
    }
    label = f"{cfg.model.name} trained ({cfg.train.max_epoch} epochs)"
    rows = {label: summary["trained"].get(target)}
    if cfg.test.compare_untrained and summary["trained"]:
        summary["untrained"] = untrained_results(cfg, engine, dm)
        rows = {f"{cfg.model.name} untrained (random init)": summary["untrained"][target], **rows}
    summary["wall_s"] = round(time.time() - start, 1)
    if all(r is not None for r in rows.values()):
        res = summary["trained"][target]
        title = (f"{target}: {res['num_query']} queries, {res['num_gallery']} gallery images "
                 f"({summary['wall_s']:.0f} s on {'CUDA' if _use_gpu(cfg) else 'CPU'})")
        summary["table"] = _results_table(rows, title)
        logger.info("\n%s\ncheckpoint: %s", summary["table"], checkpoint)
    _write_json(osp.join(cfg.data.save_dir, "results.json"), summary)
    return summary


def test(cfg: Any) -> dict[str, Any]:
    """Rank the weights ``model.load_weights`` (default: the latest checkpoint in save_dir);
    with ``test.missing_modalities`` also the missing-modality table. Returns the summary
    (also written to ``<save_dir>/test_results.json``)."""
    cfg = cfg.clone()
    cfg.defrost()
    if not cfg.model.load_weights:
        found = latest_checkpoint(cfg.data.save_dir)
        if found is None:
            raise FileNotFoundError(
                f"nothing to evaluate: model.load_weights is empty and '{cfg.data.save_dir}/model' "
                "holds no model.pth.tar-<epoch>; pass model.load_weights PATH (or train first)")
        cfg.model.load_weights = found
    cfg.freeze()
    dm, _, _, _, engine = build_all(cfg)
    summary: dict[str, Any] = {"model": cfg.model.name, "weights": cfg.model.load_weights,
                               "results": evaluate(engine, cfg)}
    label = f"{cfg.model.name} ({osp.basename(cfg.model.load_weights)})"
    for target, res in summary["results"].items():
        title = f"{target}: {res['num_query']} queries, {res['num_gallery']} gallery images"
        logger.info("\n%s", _results_table({label: res}, title=title))
    if cfg.test.missing_modalities:
        if not hasattr(engine, "evaluate_missing"):
            raise TypeError(f"engine '{cfg.sdtps.engine}' has no missing-modality evaluation; "
                            "use sdtps.engine sdtps")
        summary["missing"] = {
            target: engine.evaluate_missing(list(cfg.test.missing_settings), dataset_name=target,
                                            **{k: v for k, v in _test_kwargs(cfg).items()
                                               if k != "ranks"})
            for target in cfg.data.targets}
    _write_json(osp.join(cfg.data.save_dir, "test_results.json"), summary)
    return summary


# ----------------------------------------------------------------------------- CLI

def _parser(kind: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"tools/{kind}.py",
        description=("Train an SDTPS model (no arguments: the synthetic demo)" if kind == "train"
                     else "Evaluate a checkpoint (no arguments: the demo's latest checkpoint)"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config-file", default="", help="YAML config (torchreid key layout)")
    parser.add_argument("--root", default="", help="data root (data.root)")
    parser.add_argument("-s", "--sources", nargs="+", help="source datasets (data.sources)")
    parser.add_argument("-t", "--targets", nargs="+", help="target datasets (data.targets)")
    if kind == "train":
        parser.add_argument("--resume", default="", help="checkpoint to resume (model.resume)")
    else:
        parser.add_argument("--weights", default="", help="weights to rank (model.load_weights)")
        parser.add_argument("--missing", action="store_true",
                            help="also print the missing-modality table (test.missing_modalities)")
    parser.epilog = ("Any further arguments are KEY VALUE config overrides (before or after the "
                     "options), e.g. train.max_epoch 5 sdtps.selection gumbel")
    return parser


def _parse(kind: str, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Options anywhere; the remaining words are the ``KEY VALUE`` overrides (``opts``)."""
    parser = _parser(kind)
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    for key in rest[0::2]:
        if key.startswith("-"):
            parser.error(f"unrecognized option '{key}' (overrides are KEY VALUE pairs)")
    args.opts = rest
    return args


def _config_from_args(kind: str, args: argparse.Namespace) -> Any:
    opts = list(args.opts or [])
    extra: list[str] = []
    if args.sources:
        extra += ["data.sources", str(list(args.sources))]
    if args.targets:
        extra += ["data.targets", str(list(args.targets))]
    if kind == "train" and args.resume:
        extra += ["model.resume", args.resume]
    if kind == "test":
        if args.weights:
            extra += ["model.load_weights", args.weights]
        if args.missing:
            extra += ["test.missing_modalities", "True"]
    # no config file: the embedded synthetic demo (configs/synthetic_demo.yaml, same values)
    return config.load_config(args.config_file, extra + opts, root=args.root,
                              demo=not args.config_file)


def main_train(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """``tools/train.py``: parse, configure, log to save_dir, train; returns the summary."""
    return _main("train", argv)


def main_test(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """``tools/test.py``: parse, configure, log to save_dir, rank; returns the summary."""
    return _main("test", argv)


def _main(kind: str, argv: Optional[Sequence[str]]) -> dict[str, Any]:
    import torchreid_sdtps

    args = _parse(kind, argv)
    torchreid_sdtps.load_plugins()
    cfg = _config_from_args(kind, args)
    check_names(cfg)
    with run_logging(cfg.data.save_dir, kind) as log_path:
        logger.info("Configuration (%s):\n%s", args.config_file or "embedded synthetic_demo", cfg)
        result = train(cfg) if kind == "train" else test(cfg)
        result["log"] = log_path
    return result


def cli(kind: str, argv: Optional[Sequence[str]] = None) -> int:
    """Console entry: run ``kind`` ("train"/"test"); configuration and name errors exit 2
    with a one-line message instead of a traceback."""
    try:
        _main(kind, argv)
    except (ConfigError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        sys.stderr.write(f"tools/{kind}.py: error: {msg}\n")
        return 2
    return 0
