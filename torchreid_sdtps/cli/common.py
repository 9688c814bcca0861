"""What the config-driven commands (train, test, visualize) share: the config options, ranking
with an engine, the untrained baseline, strict weight loading and result files."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from .. import compat, config, dist
from ..build import build_model, check_names
from ..checkpoint import unwrap_model
from ..config import CfgNode
from ..data.checks import check_run
from ..engine import ddp
from ..engine.ddp import swapped_model
from ..engine.evaluation import format_table, rank_targets, results_summary
from ..engine.state import latest_checkpoint, rng_fork
from ..errors import ConfigError
from ..io import write_json
from .runner import InputNotFoundError, run_logging

__all__ = ["add_config_arguments", "config_from_args", "run_config_command", "evaluate",
           "untrained_results",
           "resolve_weights", "load_weights", "write_results", "results_table", "test_kwargs"]

logger = logging.getLogger(__name__)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-file``, ``--root``, ``-s``/``--sources``, ``-t``/``--targets``."""
    parser.add_argument("--config-file", default="",
                        help="YAML config (torchreid key layout; default: the synthetic demo)")
    parser.add_argument("--root", default="", help="data root (data.root)")
    parser.add_argument("-s", "--sources", nargs="+", help="source datasets (data.sources)")
    parser.add_argument("-t", "--targets", nargs="+", help="target datasets (data.targets)")


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> CfgNode:
    """The config of ``args`` (no ``--config-file``: the demo shipped in the package), with
    the option-derived ``extra`` overrides first and the user's ``KEY VALUE`` pairs last."""
    opts = list(extra or [])
    for flag, names in (("-s/--sources", args.sources), ("-t/--targets", args.targets)):
        dotted = [n for n in names or () if "." in n]
        if dotted:  # nargs="+" took the KEY VALUE overrides that followed it
            raise ConfigError(f"{flag} took {dotted} as data set names: give KEY VALUE "
                              f"overrides before {flag.split('/')[0]}, or with --opts")
    if args.sources:
        opts += ["data.sources", str(list(args.sources))]
    if args.targets:
        opts += ["data.targets", str(list(args.targets))]
    return config.load_config(args.config_file, opts + list(args.opts or []), root=args.root,
                              demo=not args.config_file)


def test_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """Keyword arguments of ``engine.test`` from the ``test`` node."""
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
        engine.test(**test_kwargs(cfg), **vis)
        results = engine.last_results
    else:  # torchreid's stock engines (or a third party's) only print their metrics
        results = rank_targets(engine, **test_kwargs(cfg))
        if visrank:
            engine.test(**test_kwargs(cfg), **vis)
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
        with swapped_model(engine, fresh):
            return evaluate(engine, cfg, visrank=False)


def resolve_weights(cfg: CfgNode, what: str = "evaluate") -> str:
    """``model.load_weights``, else the latest checkpoint in ``data.save_dir``; the file is
    read (:func:`~torchreid_sdtps.checkpoint.read_checkpoint`) so an unreadable one is refused
    before anything is built."""
    from ..checkpoint import read_checkpoint

    weights = str(cfg.model.load_weights)
    if not weights:
        found = latest_checkpoint(cfg.data.save_dir)
        if found is None:
            raise InputNotFoundError(
                f"nothing to {what}: model.load_weights is empty and '{cfg.data.save_dir}/model' "
                "holds no model.pth.tar-<epoch>; pass --weights PATH (or train first)")
        weights = found
    read_checkpoint(weights)  # CheckpointError naming the file: missing, truncated, foreign
    return weights


def load_weights(model: Any, weights: str, model_name: str = "") -> Any:
    """Load ``weights`` strictly into ``model`` (its DDP wrapper unwrapped): every parameter
    and buffer from the checkpoint with the same shape, else a
    :class:`~torchreid_sdtps.checkpoint.CheckpointMismatchError` naming the keys and the model
    the checkpoint holds."""
    from ..checkpoint import load_into_model

    return load_into_model(unwrap_model(model), weights, strict=True, model_name=model_name or None)


def run_config_command(args: argparse.Namespace, kind: str, extra: list[str],
                       fn: Any) -> dict[str, Any]:
    """Configure, validate what needs no data (names, P x K, the checkpoint files), join
    torchrun's group, log to save_dir (rank 0) and call ``fn(cfg, log)``."""
    from ..checkpoint import read_checkpoint

    cfg = config_from_args(args, extra)
    check_names(cfg)
    if kind == "train" and not cfg.test.evaluate:
        check_run(cfg)  # P x K before anything is written in save_dir
        if cfg.model.resume:
            read_checkpoint(cfg.model.resume)  # missing / truncated: one line naming it
    else:
        resolve_weights(cfg)  # the weights to rank exist and are readable
    joined = dist.init_distributed()  # torchrun's group (no-op without torchrun)
    logs = run_logging(cfg.data.save_dir, kind) if dist.is_main_process() else ddp.silenced()
    try:
        with logs as log:  # rank 0 alone logs
            logger.info("Configuration (%s):\n%s", args.config_file or config.DEMO_CONFIG, cfg)
            result = fn(cfg, log)
            result["log"] = log.path if log is not None else None
    finally:
        if joined:
            dist.cleanup()
    return result


def results_table(rows: dict[str, dict[str, Any]], title: str) -> str:
    return format_table(rows, title=title, first="model")


def write_results(path: str, obj: Any) -> None:
    """Write a results JSON (rank 0 alone under DDP), atomically."""
    if dist.is_main_process():
        write_json(obj, path)
