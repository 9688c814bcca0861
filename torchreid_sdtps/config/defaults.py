"""The default configuration and the synthetic demo's, built without importing a data set.

Defaults follow deep-person-reid's ``scripts/default_config.py`` layout (``model``, ``data``,
``sampler``, ``train``, ``sgd``/``rmsprop``/``adam``, ``loss``, ``test``), so a torchreid user's
YAML files and ``KEY VALUE`` overrides read the same. New here:

- ``train.warmup_epoch`` / ``train.warmup_factor`` / ``train.min_lr_factor`` and the
  ``warmup_cosine`` / ``warmup_multi_step`` / ``warmup_single_step`` schedulers;
- ``test.missing_modalities`` / ``test.missing_settings`` (the missing-modality table);
- ``test.compare_untrained`` (the demo's trained-versus-untrained table);
- the real-data recipe (docs/recipe.md): ``data.transform_style`` and DeMo's augmentation
  keys, ``train.backbone_*``/``bias_lr_factor``/``weight_decay_bias`` parameter groups,
  ``train.lr_noise*``, ``loss.triplet.soft_margin``, ``loss.head_reduction``,
  ``test.best_on_test``;
- ``train.modality_dropout.prob`` / ``.subsets`` (training for missing modalities, engine
  ``sdtps``) and ``sdtps.mask_missing`` (the model treats an all-zero modality as absent);
- ``train.sync_bn``, ``train.auto_resume``, ``sampler.distributed`` (multi-GPU runs under
  torchrun, see :mod:`torchreid_sdtps.engine.ddp`);
- ``sdtps``: the model options of SDTPSNet (one key per ``SDTPSOptions`` field), then the
  engine's: auxiliary loss weights, AMP and the engine name;
- ``synthetic``: the fields of ``SyntheticSpec`` (used when a source is ``synthetic_msreid``).

The demo's settings are the YAML file shipped in the package (:data:`DEMO_CONFIG`);
``configs/synthetic_demo.yaml`` in the repository starts from it.
"""
from __future__ import annotations

import dataclasses
import os.path as osp
from typing import Any

from ..choices import MISSING_SETTINGS
from .node import CfgNode

__all__ = ["get_default_config", "get_demo_config", "DEMO_CONFIG", "synthetic_spec",
           "model_options"]

#: the synthetic demo's settings (package data; ``tools/train.py`` with no config file)
DEMO_CONFIG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs",
                       "synthetic_demo.yaml")


def get_default_config() -> CfgNode:
    """Defaults: torchreid's ``scripts/default_config.py`` layout plus ``sdtps``/``synthetic``."""
    cfg = CfgNode()
    cfg.use_gpu = True  # use CUDA when available (torchreid's main sets this from the machine)

    cfg.model = CfgNode()
    cfg.model.name = "sdtps_clip_vit_b16"
    cfg.model.pretrained = True  # download / load the backbone's published weights
    cfg.model.load_weights = ""  # path to model weights (evaluation, fine-tuning)
    cfg.model.resume = ""  # path to a checkpoint to resume training from

    cfg.data = CfgNode()
    cfg.data.type = "image"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["rgbnt201"]
    cfg.data.targets = ["rgbnt201"]
    cfg.data.workers = 4
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ["random_flip"]
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.load_train_targets = False
    # DeMo's training pipeline (docs/recipe.md): "torchreid" builds data.transforms with
    # torchreid's build_transforms; "demo" maps them to DeMo's versions (bicubic resize,
    # flip p=data.flip_prob, pad data.pad + random crop, timm pixel RandomErasing p=erase_prob)
    cfg.data.transform_style = "torchreid"  # one of choices.TRANSFORM_STYLES
    cfg.data.flip_prob = 0.5  # "demo" style only
    cfg.data.pad = 10  # "demo" style only
    cfg.data.erase_prob = 0.5  # "demo" style only
    cfg.data.sync_modalities = True  # same random draws for every modality (False: DeMo's)

    cfg.sampler = CfgNode()
    cfg.sampler.train_sampler = "RandomIdentitySampler"
    cfg.sampler.train_sampler_t = "RandomSampler"
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1
    cfg.sampler.distributed = "auto"  # auto | always | never: P x K share per rank (DDP)

    cfg.train = CfgNode()
    cfg.train.optim = "adam"
    cfg.train.lr = 0.00035
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 50
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 64
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ["classifier"]
    cfg.train.staged_lr = False
    cfg.train.new_layers = ["classifier"]
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = "warmup_cosine"
    cfg.train.stepsize = [30, 40]
    cfg.train.gamma = 0.1
    cfg.train.warmup_epoch = 5  # linear warm-up epochs (0 = none)
    cfg.train.warmup_factor = 0.01  # lr multiplier at the first warm-up epoch
    cfg.train.min_lr_factor = 0.01  # cosine floor, as a fraction of lr
    # parameter groups (torchreid_sdtps.optim.param_groups, DeMo's make_optimizer rules)
    # dotted name prefixes of the pretrained backbone's params; [] = the model's backbone
    # (SDTPSNet.backbone_param_prefixes(): backbone.vit + backbone.proj for CLIP)
    cfg.train.backbone_params = []
    cfg.train.backbone_lr = None  # lr of backbone_params (None: as every other parameter)
    cfg.train.bias_lr_factor = 1.0  # bias lr = factor x lr (backbone biases: backbone_lr)
    cfg.train.weight_decay_bias = None  # None: train.weight_decay
    # lr noise of train.lr_scheduler timm_cosine (timm's noise_range_t = (0, max_epoch))
    cfg.train.lr_noise = False
    cfg.train.lr_noise_pct = 0.67
    cfg.train.lr_noise_std = 1.0
    cfg.train.lr_noise_seed = 42
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    cfg.train.sync_bn = False  # DDP: synchronise every BatchNorm across ranks
    cfg.train.auto_resume = False  # resume from the latest checkpoint in save_dir (restarts)
    # training for missing modalities (engine sdtps; docs/engine.md): train.modality_dropout
    # .prob/.subsets/.triplet, keys of EngineOptions (below)

    cfg.sgd = CfgNode()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CfgNode()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CfgNode()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CfgNode()
    cfg.loss.name = "triplet"
    cfg.loss.softmax = CfgNode()
    cfg.loss.triplet = CfgNode()

    cfg.test = CfgNode()
    cfg.test.batch_size = 128
    cfg.test.dist_metric = "euclidean"
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = 10
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    cfg.test.missing_modalities = False  # also rank with modalities zeroed (one table)
    cfg.test.missing_settings = list(MISSING_SETTINGS)
    cfg.test.compare_untrained = False  # rank a random-init model of the same architecture too

    # the model's options: one key per SDTPSOptions field (models/options.py documents them),
    # then the engine's name
    cfg.sdtps = _options_node()
    cfg.sdtps.engine = "sdtps"  # any registered engine: sdtps, triplet, softmax, third-party
    # the engine's options: one key per EngineOptions field (engine/options.py documents them:
    # loss.triplet.*, loss.softmax.label_smooth, loss.head_reduction, test.best_on_test,
    # test.amp, train.modality_dropout.*, sdtps.weight_*/align_*/use_amp)
    for key, value in _engine_options_class().config_defaults().items():
        _set_key(cfg, key, value)

    cfg.synthetic = _synthetic_node()  # the spec of synthetic_msreid (when it is used)
    return cfg


def get_demo_config() -> CfgNode:
    """Defaults with the shipped ``synthetic_demo.yaml`` merged in."""
    cfg = get_default_config()
    cfg.merge_from_file(DEMO_CONFIG)
    return cfg


def _engine_options_class() -> type:
    """``EngineOptions`` (pure Python: the engine's options and their config keys)."""
    from ..engine.options import EngineOptions

    return EngineOptions


def _set_key(cfg: CfgNode, key: str, value: Any) -> None:
    """Set the dotted ``key`` to ``value``, creating the nodes on its way."""
    *path, last = key.split(".")
    node = cfg
    for part in path:
        if part not in node:
            node[part] = CfgNode()
        node = node[part]
    node[last] = value


def _options_class() -> type:
    """``SDTPSOptions`` from its pure-Python module (not the model's)."""
    from ..models.options import SDTPSOptions

    return SDTPSOptions


def _options_node() -> CfgNode:
    """One key per ``SDTPSOptions`` field, its default."""
    node = CfgNode()
    for key, value in dataclasses.asdict(_options_class()()).items():
        node[key] = value
    return node


def model_options(cfg: CfgNode) -> Any:
    """The ``SDTPSOptions`` the ``sdtps`` node describes (its engine keys aside)."""
    cls = _options_class()
    return cls.from_dict({k: cfg.sdtps[k] for k in cls.field_names()}, where=" (config 'sdtps')")


def _spec_class() -> type:
    """``SyntheticSpec`` from its pure-Python module (not the data set's)."""
    from ..data.synthetic.spec import SyntheticSpec

    return SyntheticSpec


def _synthetic_node() -> CfgNode:
    """One key per ``SyntheticSpec`` field, its default (tuples as lists, as YAML writes them)."""
    node = CfgNode()
    for key, value in dataclasses.asdict(_spec_class()()).items():
        node[key] = list(value) if isinstance(value, tuple) else value
    return node


def synthetic_spec(cfg: CfgNode) -> Any:
    """The ``SyntheticSpec`` described by the ``synthetic`` node."""
    return _spec_class().from_dict({k: (tuple(v) if isinstance(v, list) else v)
                                    for k, v in cfg.synthetic.items()})
