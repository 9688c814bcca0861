"""``torchreid-sdtps-train`` (``tools/train.py``): train, rank and checkpoint as the config says.

A run is built by :mod:`torchreid_sdtps.build`; stdout and the log records go to a text log
in ``data.save_dir`` (like torchreid's ``Logger``); the results table and ``results.json`` come
last. ``model.resume`` / ``--resume`` / ``train.auto_resume`` continue from a checkpoint with
optimizer, scheduler and RNG state, so a resumed run ends exactly where the uninterrupted one
does. A run whose checkpoint already ends at ``train.max_epoch`` (the same command rerun, or
torchrun restarting a worker killed after the last checkpoint) completes: it ranks that
checkpoint, prints the table and writes ``results.json``. Partial files left by a killed
checkpoint write are removed at start; the reported time is the whole run's, across attempts
(:mod:`.runclock`).
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
import time
from typing import Any

from .. import config
from ..build import build_all, use_gpu
from ..checkpoint import unwrap_model
from ..config import CfgNode
from ..engine import ddp
from ..engine.state import latest_checkpoint, resume_from_checkpoint
from ..errors import ConfigError
from .common import (
    add_config_arguments,
    evaluate,
    results_table,
    run_config_command,
    untrained_results,
    write_results,
)
from .runclock import RunClock, remove_stale_partials
from .runner import Command, InputNotFoundError
from .test import test

__all__ = ["train", "main", "COMMAND", "console"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


def _resume(cfg: CfgNode, engine: Any, model: Any) -> tuple[int, str]:
    start_epoch = int(cfg.train.start_epoch)
    resume = ddp.resume_path(cfg)  # model.resume, or train.auto_resume's latest checkpoint
    if not resume:
        return start_epoch, ""
    if not osp.isfile(resume):
        raise InputNotFoundError(f"model.resume: no checkpoint '{resume}'")
    if hasattr(engine, "resume"):
        start_epoch = engine.resume(resume)
    else:  # the checkpoint holds the plain model, not its DDP wrapper
        start_epoch, _ = resume_from_checkpoint(resume, unwrap_model(model), engine.optimizer,
                                                engine.scheduler)
    return start_epoch, resume


def train(cfg: CfgNode, log: Any = None) -> dict[str, Any]:
    """Train (or resume, or complete a finished run), rank and checkpoint as ``cfg`` says;
    returns the results summary (also written to ``<save_dir>/results.json``)."""
    if cfg.test.evaluate:
        return test(cfg, log)
    began = time.time()
    save_dir = str(cfg.data.save_dir)
    remove_stale_partials(save_dir)
    dm, model, _, _, engine = build_all(cfg)
    start_epoch, resume = _resume(cfg, engine, model)
    max_epoch = int(cfg.train.max_epoch)
    if start_epoch > max_epoch:
        raise ConfigError(f"model.resume: the checkpoint '{resume}' ends at epoch {start_epoch}, "
                          f"after train.max_epoch {max_epoch}; raise train.max_epoch to train "
                          "on, or rank it with torchreid-sdtps-test --weights")
    clock = RunClock(save_dir, resumed=bool(resume), log=getattr(log, "path", None), start=began)
    if log is not None:
        log.keep()
    finished = bool(resume) and start_epoch == max_epoch
    if finished:  # a rerun of a finished run, or a restart after the last checkpoint
        logger.info("'%s' already ends at train.max_epoch %d: nothing left to train; ranking it",
                    resume, max_epoch)
        trained = evaluate(engine, cfg)
        checkpoint = resume
    else:
        run_kwargs = dict(config.engine_run_kwargs(cfg), start_epoch=start_epoch)
        run_kwargs.pop("test_only")
        engine.run(**run_kwargs)
        trained = _results_of(engine)
        checkpoint = getattr(engine, "last_checkpoint", None) or latest_checkpoint(save_dir)
    target = list(cfg.data.targets)[0]
    summary: dict[str, Any] = {
        "model": cfg.model.name, "engine": cfg.sdtps.engine, "epochs": max_epoch,
        "start_epoch": start_epoch, "finished_before": finished, "checkpoint": checkpoint,
        "trained": trained,
    }
    if cfg.test.best_on_test:  # explicitly labelled: chosen on the test set, not reported
        summary["best_on_test (selected on the TEST set, optimistic)"] = {
            "mAP": getattr(engine, "best_test_map", None),
            "checkpoint": osp.join(save_dir, "model", "model-best.pth.tar")}
    label = f"{cfg.model.name} trained ({max_epoch} epochs)"
    rows = {label: trained.get(target)}
    if cfg.test.compare_untrained and trained:
        summary["untrained"] = untrained_results(cfg, engine, dm)
        rows = {f"{cfg.model.name} untrained (random init)": summary["untrained"][target], **rows}
    summary.update(clock.finish())
    if all(r is not None for r in rows.values()):
        res = trained[target]
        title = (f"{target}: {res['num_query']} queries, {res['num_gallery']} gallery images "
                 f"({clock.describe()} on {'CUDA' if use_gpu(cfg) else 'CPU'})")
        summary["table"] = results_table(rows, title)
        logger.info("\n%s\ncheckpoint: %s", summary["table"], checkpoint)
    write_results(osp.join(save_dir, RESULTS_FILE), summary)
    return summary


def _results_of(engine: Any) -> dict[str, Any]:
    from ..engine.evaluation import results_summary

    return results_summary(getattr(engine, "last_results", {}))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--resume", default="", help="checkpoint to resume (model.resume)")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    extra = ["model.resume", args.resume] if args.resume else []
    return run_config_command(args, "train", extra, train)


COMMAND = Command("train", "Train an SDTPS model (no arguments: the synthetic demo)",
                  _add_arguments, _run, console_logging=False)


#: ``main(argv)``: Parse ``argv`` and train; returns the summary (errors propagate)
main = COMMAND.main
console = COMMAND.console
