"""Adapters from the configuration to the keyword arguments of what it builds.

The torchreid ones mirror deep-person-reid's ``scripts/default_config.py`` helpers (same keys);
the others feed the ``sdtps_*`` model factories, the engines and the lr schedules.
"""
from __future__ import annotations

from typing import Any

from .node import CfgNode

__all__ = ["imagedata_kwargs", "datamanager_kwargs", "model_kwargs", "optimizer_kwargs",
           "lr_scheduler_kwargs", "engine_kwargs", "engine_run_kwargs"]


def imagedata_kwargs(cfg: CfgNode) -> dict[str, Any]:
    """``torchreid.data.ImageDataManager`` keyword arguments (torchreid's helper, same keys)."""
    return {
        "root": cfg.data.root,
        "sources": list(cfg.data.sources),
        "targets": list(cfg.data.targets),
        "height": cfg.data.height,
        "width": cfg.data.width,
        "transforms": list(cfg.data.transforms),
        "k_tfm": cfg.data.k_tfm,
        "norm_mean": list(cfg.data.norm_mean),
        "norm_std": list(cfg.data.norm_std),
        "use_gpu": cfg.use_gpu,
        "split_id": cfg.data.split_id,
        "combineall": cfg.data.combineall,
        "load_train_targets": cfg.data.load_train_targets,
        "batch_size_train": cfg.train.batch_size,
        "batch_size_test": cfg.test.batch_size,
        "workers": cfg.data.workers,
        "num_instances": cfg.sampler.num_instances,
        "num_cams": cfg.sampler.num_cams,
        "num_datasets": cfg.sampler.num_datasets,
        "train_sampler": cfg.sampler.train_sampler,
        "train_sampler_t": cfg.sampler.train_sampler_t,
    }


datamanager_kwargs = imagedata_kwargs


def model_kwargs(cfg: CfgNode, num_cameras: int = 0) -> dict[str, Any]:
    """Keyword arguments of the ``sdtps_*`` factories (besides ``name``/``num_classes``)."""
    pretrained: Any = cfg.sdtps.backbone_weights or bool(cfg.model.pretrained)
    kwargs: dict[str, Any] = {
        "loss": cfg.loss.name,
        "pretrained": pretrained,
        "use_gpu": cfg.use_gpu,
        "img_size": (cfg.data.height, cfg.data.width),
        "num_cameras": int(num_cameras) if cfg.sdtps.sie_camera else 0,
        "test_feature": cfg.sdtps.test_feature,
        "sdtps_ratio": cfg.sdtps.sdtps_ratio,
        "aggr_ratio": cfg.sdtps.aggr_ratio,
        "num_aggr": cfg.sdtps.num_aggr,
        "beta": cfg.sdtps.beta,
        "selection": cfg.sdtps.selection,
        "gumbel_noise": cfg.sdtps.gumbel_noise,
        "score_grad": cfg.sdtps.score_grad,
        "neck_feat": cfg.sdtps.neck_feat,
        "ori_head": cfg.sdtps.ori_head,
        "sie_coe": cfg.sdtps.sie_coe,
        "drop_path_rate": cfg.sdtps.drop_path,
        "mask_missing": cfg.sdtps.mask_missing,
    }
    if cfg.sdtps.gumbel_tau is not None:
        kwargs["gumbel_tau"] = float(cfg.sdtps.gumbel_tau)
    return kwargs


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
    """Engine constructor keyword arguments (``build.build_engine`` passes those it accepts)."""
    return {
        "margin": cfg.loss.triplet.margin,
        "weight_t": cfg.loss.triplet.weight_t,
        "weight_x": cfg.loss.triplet.weight_x,
        "use_gpu": cfg.use_gpu,
        "label_smooth": cfg.loss.softmax.label_smooth,
        "weight_ratio": cfg.sdtps.weight_ratio,
        "weight_align": cfg.sdtps.weight_align,
        "align_margin": cfg.sdtps.align_margin,
        "align_center": cfg.sdtps.align_center,
        "use_amp": cfg.sdtps.use_amp,
        "soft_margin": cfg.loss.triplet.soft_margin,
        "head_reduction": cfg.loss.head_reduction,
        "best_on_test": cfg.test.best_on_test,
        "modality_dropout": cfg.train.modality_dropout.prob,
        "dropout_subsets": list(cfg.train.modality_dropout.subsets),
        "dropout_triplet": cfg.train.modality_dropout.triplet,
    }


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
