"""The ``torchreid-sdtps-train`` / ``torchreid-sdtps-test`` commands (``tools/*.py`` wrap them).

A run is built by :mod:`torchreid_sdtps.build` from a :func:`torchreid_sdtps.config.load_config`
configuration; this module parses the arguments, seeds, tees stdout and the log records into a
text log in ``data.save_dir`` (like torchreid's ``Logger``), trains or ranks, and writes the
results table and ``results.json`` / ``test_results.json``. Checkpoints are torchreid-format;
``model.resume`` / ``--resume`` continues from one with optimizer, scheduler and RNG state, so a
resumed run ends exactly where the uninterrupted one does.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import os.path as osp
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from . import compat, config, dist
from .build import build_all, build_model, check_names, use_gpu
from .config import CfgNode
from .data.checks import EVAL_TRAIN_SAMPLER, check_run
from .engine import ddp
from .engine.ddp import swapped_model as _swapped_model
from .engine.evaluation import format_table, rank_targets, results_summary
from .engine.state import latest_checkpoint, resume_from_checkpoint, rng_fork
from .errors import ConfigError, SDTPSError
from .io import write_json

__all__ = ["train", "test", "evaluate", "untrained_results", "latest_checkpoint", "run_logging",
           "main_train", "main_test", "cli", "console_train", "console_test"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- evaluation

def _test_kwargs(cfg: CfgNode) -> dict[str, Any]:
    return {"dist_metric": cfg.test.dist_metric, "normalize_feature": cfg.test.normalize_feature,
            "rerank": cfg.test.rerank, "ranks": list(cfg.test.ranks)}


def evaluate(engine: Any, cfg: CfgNode, visrank: bool | None = None) -> dict[str, dict[str, Any]]:
    """Rank every target with ``engine``; ``{target: {"mAP", "R1", "R5", "R10", ...}}``.
    ``visrank`` (default ``test.visrank``) also draws the rank lists to
    ``<save_dir>/visrank_<target>/`` through the engine's own ``test()``."""
    visrank = bool(cfg.test.visrank) if visrank is None else visrank
    vis = {"visrank": visrank, "visrank_topk": int(cfg.test.visrank_topk),
           "save_dir": cfg.data.save_dir}
    if hasattr(engine, "last_results"):
        engine.test(**_test_kwargs(cfg), **vis)
        results = engine.last_results
    else:  # torchreid's stock engines (or a third party's) only print their metrics
        results = rank_targets(engine, **_test_kwargs(cfg))
        if visrank:
            engine.test(**_test_kwargs(cfg), **vis)
    return results_summary(results)


def untrained_results(cfg: CfgNode, engine: Any, datamanager: Any) -> dict[str, dict[str, Any]]:
    """Rank a freshly initialised model of the same architecture (chance level), leaving the
    global RNG as it was."""
    with rng_fork():
        compat.utils().set_random_seed(cfg.train.seed)
        fresh_cfg = cfg.clone()
        fresh_cfg.defrost()
        fresh_cfg.model.load_weights = ""
        fresh = build_model(fresh_cfg, datamanager)
        with _swapped_model(engine, fresh):
            return evaluate(engine, cfg, visrank=False)


def _write_json(path: str, obj: Any) -> None:
    if not dist.is_main_process():  # DDP: rank 0 alone writes
        return
    write_json(obj, path)


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
    return format_table(rows, title=title, first="model")


def train(cfg: CfgNode) -> dict[str, Any]:
    """Train (or resume), rank and checkpoint as ``cfg`` says; returns the results summary
    (also written to ``<save_dir>/results.json``)."""
    if cfg.test.evaluate:
        return test(cfg)
    start = time.time()
    dm, model, _, _, engine = build_all(cfg)
    start_epoch = int(cfg.train.start_epoch)
    resume = ddp.resume_path(cfg)  # model.resume, or train.auto_resume's latest checkpoint
    if resume:
        if not osp.isfile(resume):
            raise FileNotFoundError(f"model.resume: no checkpoint '{resume}'")
        if hasattr(engine, "resume"):
            start_epoch = engine.resume(resume)
        else:  # the checkpoint holds the plain model, not its DDP wrapper
            start_epoch, _ = resume_from_checkpoint(resume, ddp.unwrap(model), engine.optimizer,
                                                    engine.scheduler)
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
        "trained": results_summary(getattr(engine, "last_results", {})),
    }
    if cfg.test.best_on_test:  # explicitly labelled: chosen on the test set, not reported
        summary["best_on_test (selected on the TEST set, optimistic)"] = {
            "mAP": getattr(engine, "best_test_map", None),
            "checkpoint": osp.join(cfg.data.save_dir, "model", "model-best.pth.tar")}
    label = f"{cfg.model.name} trained ({cfg.train.max_epoch} epochs)"
    rows = {label: summary["trained"].get(target)}
    if cfg.test.compare_untrained and summary["trained"]:
        summary["untrained"] = untrained_results(cfg, engine, dm)
        rows = {f"{cfg.model.name} untrained (random init)": summary["untrained"][target], **rows}
    summary["wall_s"] = round(time.time() - start, 1)
    if all(r is not None for r in rows.values()):
        res = summary["trained"][target]
        title = (f"{target}: {res['num_query']} queries, {res['num_gallery']} gallery images "
                 f"({summary['wall_s']:.0f} s on {'CUDA' if use_gpu(cfg) else 'CPU'})")
        summary["table"] = _results_table(rows, title)
        logger.info("\n%s\ncheckpoint: %s", summary["table"], checkpoint)
    _write_json(osp.join(cfg.data.save_dir, "results.json"), summary)
    return summary


def test(cfg: CfgNode) -> dict[str, Any]:
    """Rank the weights ``model.load_weights`` (default: the latest checkpoint in save_dir);
    with ``test.missing_modalities`` also the missing-modality table. Returns the summary
    (also written to ``<save_dir>/test_results.json``)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.sampler.train_sampler = EVAL_TRAIN_SAMPLER  # ranking only: no P x K batch to fill
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
            raise ConfigError(f"test.missing_modalities: engine '{cfg.sdtps.engine}' has no "
                              "missing-modality evaluation; use sdtps.engine sdtps")
        summary["missing"] = {
            target: engine.evaluate_missing(list(cfg.test.missing_settings), dataset_name=target,
                                            **{k: v for k, v in _test_kwargs(cfg).items()
                                               if k != "ranks"})
            for target in cfg.data.targets}
    _write_json(osp.join(cfg.data.save_dir, "test_results.json"), summary)
    return summary


# ----------------------------------------------------------------------------- CLI

def _parser(kind: str, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or f"tools/{kind}.py",
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


def _parse(kind: str, argv: Sequence[str] | None, prog: str | None = None
           ) -> argparse.Namespace:
    """Options anywhere; the remaining words are the ``KEY VALUE`` overrides (``opts``)."""
    parser = _parser(kind, prog)
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    for key in rest[0::2]:
        if key.startswith("-"):
            parser.error(f"unrecognized option '{key}' (overrides are KEY VALUE pairs)")
    args.opts = rest
    return args


def _config_from_args(kind: str, args: argparse.Namespace) -> CfgNode:
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
    # no config file: the synthetic demo shipped in the package (config.DEMO_CONFIG)
    return config.load_config(args.config_file, extra + opts, root=args.root,
                              demo=not args.config_file)


def main_train(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train command: parse, configure, log to save_dir, train; returns the summary."""
    return _main("train", argv)


def main_test(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Test command: parse, configure, log to save_dir, rank; returns the summary."""
    return _main("test", argv)


def _main(kind: str, argv: Sequence[str] | None, prog: str | None = None) -> dict[str, Any]:
    import torchreid_sdtps

    args = _parse(kind, argv, prog)
    torchreid_sdtps.load_plugins()
    cfg = _config_from_args(kind, args)
    check_names(cfg)
    if kind == "train" and not cfg.test.evaluate:
        check_run(cfg)  # P x K before anything is written in save_dir
    joined = dist.init_distributed()  # torchrun's group (no-op without torchrun)
    logs = run_logging(cfg.data.save_dir, kind) if dist.is_main_process() else ddp.silenced()
    try:
        with logs as log_path:  # rank 0 alone logs
            logger.info("Configuration (%s):\n%s", args.config_file or config.DEMO_CONFIG, cfg)
            result = train(cfg) if kind == "train" else test(cfg)
            result["log"] = log_path
    finally:
        if joined:
            dist.cleanup()
    return result


def cli(kind: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``kind`` ("train"/"test") as a command named ``prog`` (default ``tools/<kind>.py``);
    configuration, name and missing-file errors exit 2 with a one-line message instead of a
    traceback."""
    prog = prog or f"tools/{kind}.py"
    try:
        _main(kind, argv, prog)
    except (SDTPSError, FileNotFoundError) as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    return 0


def console_train() -> int:
    """The ``torchreid-sdtps-train`` console script."""
    return cli("train", prog="torchreid-sdtps-train")


def console_test() -> int:
    """The ``torchreid-sdtps-test`` console script."""
    return cli("test", prog="torchreid-sdtps-test")
