"""Adapters from the configuration to the keyword arguments of what it builds.

The torchreid ones mirror deep-person-reid's ``scripts/default_config.py`` helpers (same keys);
the others feed the ``sdtps_*`` model factories, the engines and the lr schedules.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..choices import MODALITIES
from .node import CfgNode

__all__ = ["IMAGEDATA_KEYS", "config_value",
           "imagedata_kwargs", "model_kwargs", "optimizer_kwargs",
           "lr_scheduler_kwargs", "engine_kwargs", "engine_run_kwargs", "make_meta"]


#: ``ImageDataManager`` keyword -> config key (torchreid's ``imagedata_kwargs``, same keys)
IMAGEDATA_KEYS: dict[str, str] = {
    "root": "data.root", "sources": "data.sources", "targets": "data.targets",
    "height": "data.height", "width": "data.width", "transforms": "data.transforms",
    "k_tfm": "data.k_tfm", "norm_mean": "data.norm_mean", "norm_std": "data.norm_std",
    "use_gpu": "use_gpu", "split_id": "data.split_id", "combineall": "data.combineall",
    "load_train_targets": "data.load_train_targets", "batch_size_train": "train.batch_size",
    "batch_size_test": "test.batch_size", "workers": "data.workers",
    "num_instances": "sampler.num_instances", "num_cams": "sampler.num_cams",
    "num_datasets": "sampler.num_datasets", "train_sampler": "sampler.train_sampler",
    "train_sampler_t": "sampler.train_sampler_t",
}

def config_value(cfg: CfgNode, key: str) -> Any:
    """The value of the dotted ``key`` (lists as lists)."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def _from_table(cfg: CfgNode, table: dict[str, str]) -> dict[str, Any]:
    return {kwarg: config_value(cfg, key) for kwarg, key in table.items()}


def imagedata_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """``torchreid.data.ImageDataManager`` keyword arguments (torchreid's helper, same keys)."""
    return _from_table(cfg, IMAGEDATA_KEYS)



def model_kwargs(cfg: CfgNode, num_cameras: int = 0) -> dict[str, Any]:
    """Keyword arguments of a registered model factory besides ``num_classes``: torchreid's
    (``loss``, ``pretrained``, ``use_gpu``), the data's (``img_size``, ``num_cameras``) and the
    ``sdtps`` node as one :class:`~torchreid_sdtps.models.options.SDTPSOptions` (``options``)."""
    from .defaults import model_options

    return {
        "loss": cfg.loss.name,
        "pretrained": bool(cfg.model.pretrained),
        "use_gpu": cfg.use_gpu,
        "img_size": (cfg.data.height, cfg.data.width),
        "num_cameras": int(num_cameras),
        "options": model_options(cfg),
    }


def make_meta(cfg: CfgNode, num_classes: int, num_cameras: int,
              modalities: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """The checkpoint meta of a model built from ``cfg``
    (:func:`torchreid_sdtps.checkpoint.make_meta` with the config's values)."""
    from ..checkpoint import make_meta as make_plain_meta
    from .defaults import model_options

    return make_plain_meta(
        str(cfg.model.name), num_classes, num_cameras, model_options(cfg).to_dict(),
        height=cfg.data.height, width=cfg.data.width, norm_mean=list(cfg.data.norm_mean),
        norm_std=list(cfg.data.norm_std), sources=list(cfg.data.sources),
        config_text=cfg.dump(), modalities=modalities)


def optimizer_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """Keyword arguments of :func:`torchreid_sdtps.optim.build_optimizer` (torchreid's
    ``build_optimizer`` keys plus the parameter-group ones)."""
    return {
        "optim": cfg.train.optim,
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "momentum": cfg.sgd.momentum,
        "sgd_dampening": cfg.sgd.dampening,
        "sgd_nesterov": cfg.sgd.nesterov,
        "rmsprop_alpha": cfg.rmsprop.alpha,
        "adam_beta1": cfg.adam.beta1,
        "adam_beta2": cfg.adam.beta2,
        "staged_lr": cfg.train.staged_lr,
        "new_layers": list(cfg.train.new_layers),
        "base_lr_mult": cfg.train.base_lr_mult,
        "backbone_params": list(cfg.train.backbone_params),
        "backbone_lr": cfg.train.backbone_lr,
        "bias_lr_factor": cfg.train.bias_lr_factor,
        "weight_decay_bias": cfg.train.weight_decay_bias,
    }


def lr_scheduler_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """Keyword arguments of :func:`torchreid_sdtps.optim.build_lr_scheduler`."""
    return {
        "lr_scheduler": cfg.train.lr_scheduler,
        "stepsize": list(cfg.train.stepsize),
        "gamma": cfg.train.gamma,
        "max_epoch": cfg.train.max_epoch,
        "warmup_epoch": cfg.train.warmup_epoch,
        "warmup_factor": cfg.train.warmup_factor,
        "min_lr_factor": cfg.train.min_lr_factor,
        "lr": cfg.train.lr,
        "lr_noise": cfg.train.lr_noise,
        "lr_noise_pct": cfg.train.lr_noise_pct,
        "lr_noise_std": cfg.train.lr_noise_std,
        "lr_noise_seed": cfg.train.lr_noise_seed,
    }


def engine_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """Engine constructor keyword arguments: every
    :class:`~torchreid_sdtps.engine.options.EngineOptions` field from its config key
    (``build.build_engine`` passes those the engine takes and refuses a changed value of one it
    does not)."""
    from ..engine.options import EngineOptions

    return _from_table(cfg, EngineOptions.keys())


def engine_run_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """``Engine.run`` keyword arguments (torchreid's helper, same keys)."""
    return {
        "save_dir": cfg.data.save_dir,
        "max_epoch": cfg.train.max_epoch,
        "start_epoch": cfg.train.start_epoch,
        "fixbase_epoch": cfg.train.fixbase_epoch,
        "open_layers": list(cfg.train.open_layers),
        "start_eval": cfg.test.start_eval,
        "eval_freq": cfg.test.eval_freq,
        "test_only": cfg.test.evaluate,
        "print_freq": cfg.train.print_freq,
        "dist_metric": cfg.test.dist_metric,
        "normalize_feature": cfg.test.normalize_feature,
        "visrank": cfg.test.visrank,
        "visrank_topk": cfg.test.visrank_topk,
        "ranks": list(cfg.test.ranks),
        "rerank": cfg.test.rerank,
    }
