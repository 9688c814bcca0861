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
from ..checkpoint import Checkpointer, Loaded, resume_engine
from ..config import CfgNode
from ..errors import ConfigError
from ..logs import SHOW
from .common import (
    add_config_arguments,
    evaluate,
    results_table,
    run_config_command,
    untrained_results,
    write_results,
)
from .runclock import RunClock
from .runner import Command, InputNotFoundError
from .test import test

__all__ = ["train", "main", "COMMAND", "console"]

logger = logging.getLogger(__name__)

def _resume(cfg: CfgNode, engine: Any, loaded: Loaded | None) -> tuple[int, str]:
    """Resume ``engine`` from ``loaded`` (``model.resume`` as read) or, with
    ``train.auto_resume``, the latest checkpoint in save_dir; the epoch to start from and the
    checkpoint's path ("" for a fresh run)."""
    if loaded is None:
        found = Checkpointer(cfg.data.save_dir).find_resume(str(cfg.model.resume),
                                                             bool(cfg.train.auto_resume))
        if not found:
            return int(cfg.train.start_epoch), ""
        if not osp.isfile(found):
            raise InputNotFoundError(f"model.resume: no checkpoint '{found}'")
        loaded = Checkpointer.read(found)
    return resume_engine(engine, loaded), loaded.path


def train(cfg: CfgNode, log: Any = None, resume: Loaded | None = None,
          weights: Loaded | None = None) -> dict[str, Any]:
    """Train (or resume, or complete a finished run), rank and checkpoint as ``cfg`` says;
    returns the results summary (also written to ``<save_dir>/results.json``). ``resume``:
    the ``model.resume`` checkpoint already read (``weights``: the one to rank with
    ``test.evaluate``)."""
    if cfg.test.evaluate:
        return test(cfg, log, weights=weights)
    began = time.time()
    save_dir = str(cfg.data.save_dir)
    ck = Checkpointer(save_dir)
    ck.remove_partials()
    dm, model, _, _, engine = build_all(cfg)
    start_epoch, resume_path = _resume(cfg, engine, resume)
    max_epoch = int(cfg.train.max_epoch)
    if start_epoch > max_epoch:
        raise ConfigError(f"model.resume: the checkpoint '{resume_path}' ends at epoch "
                          f"{start_epoch}, after train.max_epoch {max_epoch}; raise "
                          "train.max_epoch to train on, or rank it with torchreid-sdtps-test "
                          "--weights")
    clock = RunClock(save_dir, resumed=bool(resume_path), log=getattr(log, "path", None), start=began)
    if log is not None:
        log.keep()
    finished = bool(resume_path) and start_epoch == max_epoch
    if finished:  # a rerun of a finished run, or a restart after the last checkpoint
        logger.info("'%s' already ends at train.max_epoch %d: nothing left to train; ranking it",
                    resume_path, max_epoch)
        trained = evaluate(engine, cfg)
        checkpoint = resume_path
    else:
        run_kwargs = dict(config.engine_run_kwargs(cfg), start_epoch=start_epoch)
        run_kwargs.pop("test_only")
        engine.run(**run_kwargs)
        trained = _results_of(engine)
        checkpoint = getattr(engine, "last_checkpoint", None) or ck.latest()
    target = list(cfg.data.targets)[0]
    summary: dict[str, Any] = {
        "model": cfg.model.name, "engine": cfg.sdtps.engine, "epochs": max_epoch,
        "start_epoch": start_epoch, "finished_before": finished, "checkpoint": checkpoint,
        "trained": trained,
    }
    if cfg.test.best_on_test:  # explicitly labelled: chosen on the test set, not reported
        summary["best_on_test (selected on the TEST set, optimistic)"] = {
            "mAP": getattr(engine, "best_test_map", None),
            "checkpoint": ck.best_path()}
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
        logger.info("\n%s\ncheckpoint: %s", summary["table"], checkpoint, extra=SHOW)
    else:  # an engine that only prints its metrics (torchreid's stock ones): they are in the log
        logger.info("checkpoint: %s\nlog: %s", checkpoint, getattr(log, "path", None), extra=SHOW)
    write_results(ck.file(ck.RESULTS), summary)
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
