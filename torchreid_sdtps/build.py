"""Build a run by registered name: data manager, model, optimizer, schedule and engine.

The data sets come through torchreid's ``ImageDataManager``, the model from torchreid's model
registry and the engine from the plugin's engine registry (``plugins.get_engine``), after
:func:`torchreid_sdtps.load_plugins` has registered every installed entry point. An unknown name
raises :class:`~torchreid_sdtps.errors.UnknownNameError` listing the registered ones.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from . import checkpoint, compat, config, dist, plugins
from .choices import SYNTHETIC_DATASET
from .config import CfgNode
from .data.checks import check_run
from .engine import ddp
from .engine.options import EngineOptions
from .errors import ConfigError, UnknownNameError
from .optim import build_lr_scheduler, build_optimizer

__all__ = ["check_names", "build_datamanager", "set_train_transform", "num_camera_labels",
           "build_model", "build_engine",
           "build_all", "use_gpu"]

logger = logging.getLogger(__name__)


def _takes(fn: Any) -> tuple[set[str], bool]:
    """Keyword names ``fn`` takes, and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    return set(params), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _supported(fn: Any, kwargs: dict[str, Any], keys: dict[str, str], what: str,
               plain: dict[str, Any] | None = None) -> dict[str, Any]:
    """``kwargs`` for ``fn``; one it does not take is left out when its config key
    (``keys[name]``) holds the default value or the ``plain`` one (what an engine without
    the option does anyway, e.g. ``use_amp False``), and refused with :class:`ConfigError`
    naming the key otherwise: a setting is never silently dropped."""
    names, var_kw = _takes(fn)
    if var_kw:
        return dict(kwargs)
    defaults = config.get_default_config()
    out = {}
    for name, value in kwargs.items():
        if name in names:
            out[name] = value
        elif name in keys and value != config.config_value(defaults, keys[name]) and (
                plain is None or name not in plain or value != plain[name]):
            raise ConfigError(f"{what} has no option '{name}', but {keys[name]}={value!r} asks for "
                              f"it; set {keys[name]} back to its default "
                              f"{config.config_value(defaults, keys[name])!r}")
        elif name not in keys:
            raise ConfigError(f"{what} does not take the argument '{name}'")
    return out


def check_names(cfg: CfgNode) -> None:
    """Raise :class:`UnknownNameError` naming the registered choices for an unknown data set,
    model or engine name (after ``load_plugins()``)."""
    datasets = plugins.dataset_names()
    for key in ("sources", "targets"):
        for name in cfg.data[key]:
            if name not in datasets:
                raise UnknownNameError(f"unknown dataset '{name}' (data.{key}); registered "
                                       f"datasets: {datasets}")
    models = plugins.model_names()
    if cfg.model.name not in models:
        raise UnknownNameError(f"unknown model '{cfg.model.name}' (model.name); registered "
                               f"models: {models}")
    plugins.get_engine(cfg.sdtps.engine)  # UnknownNameError listing the registered engines


def build_datamanager(cfg: CfgNode) -> Any:
    """torchreid's ``ImageDataManager`` for ``cfg`` (``synthetic_msreid`` is generated from
    ``cfg.synthetic``)."""
    dm_cls = compat.data().ImageDataManager
    kwargs = config.imagedata_kwargs(cfg)
    params = inspect.signature(dm_cls.__init__).parameters
    if "use_gpu" not in params and "device" in params:  # newer torchreid takes device=
        gpu = kwargs.pop("use_gpu") and torch.cuda.is_available()
        kwargs["device"] = "cuda" if gpu else "cpu"
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if SYNTHETIC_DATASET in list(cfg.data.sources) + list(cfg.data.targets):
        from .data.synthetic import using_spec

        ctx = using_spec(config.synthetic_spec(cfg))
    with ctx:
        dm = dm_cls(**_supported(dm_cls.__init__, kwargs, config.IMAGEDATA_KEYS,
                                 f"data manager {dm_cls.__name__}"))
    set_train_transform(dm.train_loader.dataset, cfg)
    return dm


def set_train_transform(dataset: Any, cfg: CfgNode) -> None:
    """Give the training data set ``data.transform_style``'s transform (``demo``: DeMo's
    pipeline, :func:`~torchreid_sdtps.data.transforms.build_demo_train_transform`) and
    ``data.sync_modalities``; torchreid's data manager built it with torchreid's transforms."""
    if cfg.data.transform_style == "demo":
        from .data.transforms import build_demo_train_transform

        dataset.transform = build_demo_train_transform(
            cfg.data.height, cfg.data.width, list(cfg.data.transforms),
            list(cfg.data.norm_mean), list(cfg.data.norm_std), flip_prob=cfg.data.flip_prob,
            pad=cfg.data.pad, erase_prob=cfg.data.erase_prob)
    if not hasattr(dataset, "sync_modalities"):
        if not cfg.data.sync_modalities:
            raise ConfigError(f"data.sync_modalities False needs a multi-modal training set; "
                              f"{type(dataset).__name__} has no modalities to decouple")
        return
    dataset.sync_modalities = bool(cfg.data.sync_modalities)


def num_camera_labels(datamanager: Any) -> int:
    """Size of the camera embedding: ``1 + max cam_label`` over train, query and gallery."""
    sets = [datamanager.train_loader.dataset]
    for loaders in datamanager.test_loader.values():
        sets += [loaders["query"].dataset, loaders["gallery"].dataset]
    counts = [int(getattr(d, "num_cam_labels", 0) or 0) for d in sets]
    return max(counts + [int(datamanager.num_train_cams)])


def use_gpu(cfg: CfgNode) -> bool:
    """Whether the run uses CUDA: ``cfg.use_gpu`` and a visible device."""
    return bool(cfg.use_gpu) and torch.cuda.is_available()


def build_model(cfg: CfgNode, datamanager: Any) -> torch.nn.Module:
    """The registered model ``cfg.model.name``: an SDTPS factory (one that takes ``options``)
    gets the ``sdtps`` node as one ``SDTPSOptions``; another (torchreid's ``osnet_x0_25``...)
    torchreid's arguments, and a changed ``sdtps`` model option is refused. The model carries
    its checkpoint meta (:func:`checkpoint.attach_meta`); ``model.load_weights`` is loaded
    strictly (:func:`checkpoint.load_into_model`)."""
    factory = compat.model_factory()[cfg.model.name]
    num_cameras = num_camera_labels(datamanager)
    kwargs = config.model_kwargs(cfg, num_cameras=num_cameras)
    names, _ = _takes(factory)
    if "options" not in names:
        changed = [k for k, v in kwargs["options"].to_dict().items()
                   if v != getattr(type(kwargs["options"])(), k)]
        if changed:
            raise ConfigError(f"model '{cfg.model.name}' is not an SDTPS model; sdtps.{changed[0]} "
                              "configures SDTPS models only (set it back to its default)")
        kwargs = {k: kwargs[k] for k in ("loss", "pretrained", "use_gpu")}
    model = factory(num_classes=datamanager.num_train_pids, **kwargs)
    meta = config.make_meta(cfg, datamanager.num_train_pids, num_cameras)
    if "options" not in names:
        meta["model_kwargs"] = {}  # torchreid's own model: no SDTPS options
    checkpoint.attach_meta(model, meta)
    if cfg.model.load_weights:  # errors name this model by its meta (name, classes, cameras)
        checkpoint.load_into_model(model, cfg.model.load_weights)
        logger.info("Loaded the weights of '%s' (every key, strict)", cfg.model.load_weights)
    if use_gpu(cfg):
        model = model.cuda()
    return model


def build_engine(cfg: CfgNode, datamanager: Any, model: torch.nn.Module, optimizer: Any,
                 scheduler: Any, hooks: Sequence[Any] = ()) -> Any:
    """The registered engine ``cfg.sdtps.engine`` with the options its constructor accepts
    (:class:`~torchreid_sdtps.engine.options.EngineOptions`: one changed from its default that
    the engine cannot honour is refused), in its distributed form for a distributed run
    (:func:`ddp.make_engine`); ``hooks`` go to an engine that takes them and are refused by
    one that does not."""
    engine_cls = plugins.get_engine(cfg.sdtps.engine)
    kwargs = dict(config.engine_kwargs(cfg), optimizer=optimizer, scheduler=scheduler)
    if hooks:
        kwargs["hooks"] = list(hooks)
    accepted = _supported(engine_cls.__init__, kwargs, EngineOptions.keys(),
                          f"engine '{cfg.sdtps.engine}' ({engine_cls.__name__})",
                          plain=EngineOptions.plain_values())
    return ddp.make_engine(engine_cls, cfg, datamanager, model, **accepted)


def build_all(cfg: CfgNode, hooks: Sequence[Any] = ()
              ) -> tuple[Any, torch.nn.Module, Any, Any, Any]:
    """Data manager, model, optimizer, scheduler and engine of ``cfg`` (seeded first);
    ``hooks`` are the engine's (:mod:`torchreid_sdtps.engine.hooks`)."""
    compat.utils().set_random_seed(cfg.train.seed)
    check_names(cfg)
    check_run(cfg)  # P x K batches (data-free) before any data is built
    with dist.main_first():  # rank 0 generates/downloads the data first
        dm = build_datamanager(cfg)
    ddp.use_distributed_sampler(dm, cfg)  # this rank's share of the global batches
    model = build_model(cfg, dm)
    model = ddp.convert_model(model, cfg)  # train.sync_bn: new modules, before the optimizer
    optimizer = build_optimizer(model, **config.optimizer_kwargs(cfg))
    scheduler = build_lr_scheduler(optimizer, **config.lr_scheduler_kwargs(cfg))
    model = ddp.wrap_model(model)  # DistributedDataParallel (no-op in one process)
    # distributed runs: global-batch losses, rank-0 IO, set_epoch (ddp.engine_class)
    engine = build_engine(cfg, dm, model, optimizer, scheduler, hooks=hooks)
    return dm, model, optimizer, scheduler, engine
