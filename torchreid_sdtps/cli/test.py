"""``torchreid-sdtps-test`` (``tools/test.py``): rank a checkpoint; ``--missing`` adds the
missing-modality table.

The weights are loaded strictly (:func:`torchreid_sdtps.checkpoint.load_into_model`): a
checkpoint of another model, of torchreid's own models or a truncated file is refused with
one line naming it, before ``test_results.json`` is touched.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
from typing import Any

from ..build import build_all
from ..checkpoint import Checkpointer, Loaded
from ..config import CfgNode
from ..data.checks import EVAL_TRAIN_SAMPLER
from ..errors import ConfigError
from ..logs import SHOW
from .common import (
    add_config_arguments,
    evaluate,
    load_weights,
    resolve_weights,
    results_table,
    run_config_command,
    test_kwargs,
    write_results,
)
from .runner import Command

__all__ = ["test", "main", "COMMAND", "console"]

logger = logging.getLogger(__name__)

def test(cfg: CfgNode, log: Any = None, weights: Loaded | None = None) -> dict[str, Any]:
    """Rank the weights ``model.load_weights`` (default: the latest checkpoint in save_dir;
    ``weights``: that checkpoint already read); with ``test.missing_modalities`` also the
    missing-modality table. Returns the summary (also written to
    ``<save_dir>/test_results.json``, after every input was accepted)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.sampler.train_sampler = EVAL_TRAIN_SAMPLER  # ranking only: no P x K batch to fill
    loaded = weights if weights is not None else resolve_weights(cfg)
    cfg.model.load_weights = ""  # built plain, then loaded strictly below
    cfg.freeze()
    dm, model, _, _, engine = build_all(cfg)
    load_weights(model, loaded, str(cfg.model.name))
    if log is not None:
        log.keep()
    summary: dict[str, Any] = {"model": cfg.model.name, "weights": loaded.path,
                               "results": evaluate(engine, cfg)}
    label = f"{cfg.model.name} ({osp.basename(loaded.path)})"
    for target, res in summary["results"].items():
        title = f"{target}: {res['num_query']} queries, {res['num_gallery']} gallery images"
        logger.info("\n%s", results_table({label: res}, title=title), extra=SHOW)
    if cfg.test.missing_modalities:
        if not hasattr(engine, "evaluate_missing"):
            raise ConfigError(f"test.missing_modalities: engine '{cfg.sdtps.engine}' has no "
                              "missing-modality evaluation; use sdtps.engine sdtps")
        summary["missing"] = {
            target: engine.evaluate_missing(list(cfg.test.missing_settings), dataset_name=target,
                                            **{k: v for k, v in test_kwargs(cfg).items()
                                               if k != "ranks"})
            for target in cfg.data.targets}
    write_results(Checkpointer(cfg.data.save_dir).file(Checkpointer.TEST_RESULTS), summary)
    return summary


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--weights", default="", help="weights to rank (model.load_weights; "
                        "default: the latest checkpoint in data.save_dir)")
    parser.add_argument("--missing", action="store_true",
                        help="also print the missing-modality table (test.missing_modalities)")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    extra = ["model.load_weights", args.weights] if args.weights else []
    if args.missing:
        extra += ["test.missing_modalities", "True"]
    return run_config_command(args, "test", extra, test)


COMMAND = Command("test", "Evaluate a checkpoint (no arguments: the demo's latest checkpoint)",
                  _add_arguments, _run, console_logging=False)


#: ``main(argv)``: Parse ``argv`` and rank; returns the summary (errors propagate)
main = COMMAND.main
console = COMMAND.console
