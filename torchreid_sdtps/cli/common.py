"""What the config-driven commands (train, test, visualize) share: the config options, ranking
with an engine, the untrained baseline, strict weight loading and result files."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os.path as osp
from typing import Any

from .. import compat, config, dist
from ..build import build_model, check_names
from ..checkpoint import Checkpointer, Loaded, unwrap_model
from ..config import CfgNode
from ..data.checks import check_run
from ..engine.ddp import swapped_model
from ..engine.evaluation import format_table, rank_targets, results_summary
from ..engine.state import rng_fork
from ..errors import ConfigError
from ..io import write_json
from ..logs import run_logging, silenced
from .runner import InputNotFoundError

__all__ = ["add_config_arguments", "config_from_args", "run_config_command", "evaluate",
           "untrained_results", "check_training",
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


def resolve_weights(cfg: CfgNode, what: str = "evaluate") -> Loaded:
    """``model.load_weights``, else the latest checkpoint in ``data.save_dir``, read
    (:meth:`Checkpointer.read`) so an unreadable one is refused before anything is built; the
    command uses what was read (one read per file)."""
    weights = str(cfg.model.load_weights)
    if not weights:
        ck = Checkpointer(cfg.data.save_dir)
        found = ck.latest()
        if found is None:
            raise InputNotFoundError(
                f"nothing to {what}: model.load_weights is empty and '{ck.model_dir()}' "
                f"holds no {ck.PREFIX}<epoch>; pass --weights PATH (or train first)")
        weights = found
    return Checkpointer.read(weights)  # CheckpointError naming the file: missing, truncated...


def load_weights(model: Any, weights: str | Loaded, model_name: str = "") -> Any:
    """Load ``weights`` (a path or what was read) strictly into ``model`` (its DDP wrapper
    unwrapped): every parameter and buffer from the checkpoint with the same shape, else a
    :class:`~torchreid_sdtps.checkpoint.CheckpointMismatchError` naming the keys and the model
    the checkpoint holds."""
    from ..checkpoint import load_into_model

    loaded = weights if isinstance(weights, Loaded) else Checkpointer.read(weights)
    return load_into_model(unwrap_model(model), loaded.data, strict=True,
                           model_name=model_name or None, source_name=loaded.path)


def check_training(cfg: CfgNode) -> dict[str, Any]:
    """What a training run checks before it touches ``data.save_dir``: P x K batches, the
    resume checkpoint (read once, handed on), a run that would do nothing, a run that would
    replace another run. Returns the inputs for ``train`` (``resume``: a :class:`Loaded`)."""
    from .runclock import refuse_other_run

    check_run(cfg)  # P x K before anything is written in save_dir
    max_epoch, start = int(cfg.train.max_epoch), int(cfg.train.start_epoch)
    inputs: dict[str, Any] = {}
    if cfg.model.resume:
        loaded = Checkpointer.read(cfg.model.resume)  # missing / truncated: one line naming it
        epoch = loaded.data.get("epoch")
        if isinstance(epoch, int) and epoch > max_epoch:
            raise ConfigError(f"model.resume: the checkpoint '{loaded.path}' ends at epoch "
                              f"{epoch}, after train.max_epoch {max_epoch}; raise "
                              "train.max_epoch to train on, or rank it with torchreid-sdtps-test "
                              "--weights")
        inputs["resume"] = loaded
    elif not cfg.train.auto_resume and start >= max_epoch:
        raise ConfigError(f"train.start_epoch {start} >= train.max_epoch {max_epoch}: the run "
                          "would train nothing; lower train.start_epoch or raise train.max_epoch")
    refuse_other_run(str(cfg.data.save_dir), _resumes_its_run(cfg))
    return inputs


def _resumes_its_run(cfg: CfgNode) -> bool:
    """Whether the run continues the run in its own ``data.save_dir``."""
    if cfg.train.auto_resume:
        return True
    inside = osp.relpath(osp.abspath(str(cfg.model.resume)), osp.abspath(str(cfg.data.save_dir)))
    return bool(cfg.model.resume) and not inside.startswith(osp.pardir)


def run_config_command(args: argparse.Namespace, kind: str, extra: list[str],
                       fn: Any) -> dict[str, Any]:
    """Configure, validate what needs no data (names, P x K, the checkpoint files, a run that
    would do nothing or replace another), join torchrun's group, hold the run dir's lock (a
    training run), log to save_dir (rank 0) and call ``fn(cfg, log, **inputs)`` with the
    checkpoint read here (``resume`` or ``weights``)."""
    cfg = config_from_args(args, extra)
    check_names(cfg)
    training = kind == "train" and not cfg.test.evaluate
    inputs = check_training(cfg) if training else {"weights": resolve_weights(cfg)}
    joined = dist.init_distributed()  # torchrun's group (no-op without torchrun)
    log = None
    try:
        held = (Checkpointer(cfg.data.save_dir).lock() if training
                else contextlib.nullcontext())
        with held:  # one run per save_dir, for the run's whole life (all ranks as one)
            if training:  # again under the lock: a run that ended meanwhile is not replaced
                from .runclock import refuse_other_run

                refuse_other_run(str(cfg.data.save_dir), _resumes_its_run(cfg))
            logs = (run_logging(cfg.data.save_dir, kind) if dist.is_main_process()
                    else silenced())
            with logs as log:  # rank 0 alone logs
                if log is not None:  # the config goes to the log file, not to the screen
                    log.note(f"Configuration ({args.config_file or config.DEMO_CONFIG}):\n{cfg}")
                result = fn(cfg, log, **inputs)
                result["log"] = log.path if log is not None else None
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM: the runner's one line says what is kept
        exc.kept = _kept_after_interrupt(kind, cfg, log)  # type: ignore[attr-defined]
        raise
    finally:
        if joined:
            dist.cleanup()
    return result


def _kept_after_interrupt(kind: str, cfg: CfgNode, log: Any) -> str:
    """What an interrupted run leaves: nothing before it began (its log is removed), else its
    log and, for training, the latest checkpoint to resume from."""
    if log is None or not getattr(log, "kept", False):
        return ""
    if kind != "train" or cfg.test.evaluate:
        return f"kept the log {log.path}"
    ckpt = Checkpointer(str(cfg.data.save_dir)).latest()
    if ckpt is None:
        return f"no checkpoint yet; kept the log {log.path}"
    return (f"kept {ckpt} and the log {log.path}; resume with the same command and "
            "train.auto_resume True")


def results_table(rows: dict[str, dict[str, Any]], title: str) -> str:
    return format_table(rows, title=title, first="model")


def write_results(path: str, obj: Any) -> None:
    """Write a results JSON (rank 0 alone under DDP), atomically."""
    if dist.is_main_process():
        write_json(obj, path)
