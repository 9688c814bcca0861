"""yacs configuration in torchreid's own key layout plus an ``sdtps`` node.

The nodes ``model``, ``data``, ``sampler``, ``train``, ``sgd``/``rmsprop``/``adam``, ``loss`` and
``test`` carry the keys and meanings of deep-person-reid's ``scripts/default_config.py``, so a
torchreid user's YAML files and ``KEY VALUE`` overrides read the same. New here:

- ``train.warmup_epoch`` / ``train.warmup_factor`` and the ``warmup_cosine`` /
  ``warmup_multi_step`` / ``warmup_single_step`` schedulers (torchreid has no warm-up);
- ``test.missing_modalities`` / ``test.missing_settings`` (the missing-modality table);
- ``test.compare_untrained`` (the demo's trained-versus-untrained table);
- ``train.sync_bn``, ``train.auto_resume``, ``sampler.distributed`` (multi-GPU runs under
  torchrun, see :mod:`torchreid_sdtps.engine.ddp`);
- ``sdtps``: model options of SDTPSNet, auxiliary loss weights, AMP and the engine name;
- ``synthetic``: the fields of ``SyntheticSpec`` (used when a source is ``synthetic_msreid``).

Merging is strict: an unknown key raises :class:`ConfigError` naming the key, the file (or
"command-line override") and the keys valid there; a key naming HDM/ATM/MoE in any node and
any case is refused, because SDTPS *replaces* those DeMo stages (review R3).
"""
from __future__ import annotations

import copy
import difflib
import os.path as osp
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN
from yacs.config import _check_and_coerce_cfg_value_type

__all__ = [
    "ConfigError", "get_default_config", "get_demo_config", "DEMO_OVERRIDES",
    "merge_from_file", "merge_from_list", "merge_from_dict", "load_config",
    "datamanager_kwargs", "imagedata_kwargs", "model_kwargs", "optimizer_kwargs",
    "lr_scheduler_kwargs", "engine_kwargs", "engine_run_kwargs", "synthetic_spec",
    "REMOVED_STAGES", "SAMPLER_MODES",
]

#: DeMo stages that SDTPS replaces; a config key naming one of them is refused
REMOVED_STAGES: tuple[str, ...] = ("hdm", "atm", "moe")
_REMOVED_RE = re.compile(r"(?:^|[^a-z0-9])(" + "|".join(REMOVED_STAGES) + r")(?:$|[^a-z0-9])")


#: values of ``sampler.distributed`` (see :mod:`torchreid_sdtps.engine.ddp`)
SAMPLER_MODES: tuple[str, ...] = ("auto", "always", "never")


class ConfigError(ValueError):
    """A configuration key or value is not acceptable (unknown, removed, wrong type)."""


def get_default_config() -> CN:
    """Defaults: torchreid's ``scripts/default_config.py`` layout plus ``sdtps``/``synthetic``."""
    cfg = CN()
    cfg.use_gpu = True  # use CUDA when available (torchreid's main sets this from the machine)

    cfg.model = CN()
    cfg.model.name = "sdtps_clip_vit_b16"
    cfg.model.pretrained = True  # download / load the backbone's published weights
    cfg.model.load_weights = ""  # path to model weights (evaluation, fine-tuning)
    cfg.model.resume = ""  # path to a checkpoint to resume training from

    cfg.data = CN()
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

    cfg.sampler = CN()
    cfg.sampler.train_sampler = "RandomIdentitySampler"
    cfg.sampler.train_sampler_t = "RandomSampler"
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1
    cfg.sampler.distributed = "auto"  # auto | always | never: P x K share per rank (DDP)

    cfg.train = CN()
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
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    cfg.train.sync_bn = False  # DDP: synchronise every BatchNorm across ranks
    cfg.train.auto_resume = False  # resume from the latest checkpoint in save_dir (restarts)

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "triplet"
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 1.0

    cfg.test = CN()
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
    cfg.test.missing_settings = ["none", "RGB", "NI", "TI", "RGB+NI", "RGB+TI", "NI+TI"]
    cfg.test.compare_untrained = False  # rank a random-init model of the same architecture too

    cfg.sdtps = CN()
    cfg.sdtps.engine = "sdtps"  # any registered engine: sdtps, triplet, softmax, third-party
    cfg.sdtps.backbone_weights = ""  # local backbone weight file (overrides model.pretrained)
    cfg.sdtps.sie_camera = True  # SIE camera embedding sized from the data sets' cam_labels
    cfg.sdtps.test_feature = "concat"  # concat | sdtps | ori
    cfg.sdtps.sdtps_ratio = 0.5  # rho: kept fraction of patches
    cfg.sdtps.aggr_ratio = 0.4  # alpha: N_c = round(N * rho * alpha)
    cfg.sdtps.num_aggr = None  # explicit N_c (None = from aggr_ratio)
    cfg.sdtps.beta = 0.25
    cfg.sdtps.selection = "topk"  # topk | gumbel
    cfg.sdtps.gumbel_noise = 0.1
    cfg.sdtps.gumbel_tau = None  # None = the model's default
    cfg.sdtps.score_grad = False
    cfg.sdtps.weight_ratio = 1.0  # SelectionRatioLoss weight (0 under topk anyway)
    cfg.sdtps.weight_align = 0.5  # CrossModalAlignmentLoss weight
    cfg.sdtps.align_margin = 0.2
    cfg.sdtps.align_center = True  # centre tokens in the alignment loss (no collapse shortcut)
    cfg.sdtps.use_amp = True  # CUDA only; ignored (with a note) on the CPU

    cfg.synthetic = _synthetic_node()  # the spec of synthetic_msreid (when it is used)
    return cfg


#: the embedded ``synthetic_demo`` settings (configs/synthetic_demo.yaml holds the same values)
DEMO_OVERRIDES: dict[str, Any] = {
    "model": {"name": "sdtps_vit_tiny", "pretrained": False},
    "data": {"sources": ["synthetic_msreid"], "targets": ["synthetic_msreid"],
             "height": 128, "width": 64, "workers": 0,
             "transforms": ["random_flip"], "save_dir": "log/synthetic_demo",
             "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5]},
    "sampler": {"train_sampler": "RandomIdentitySampler", "num_instances": 4},
    "train": {"optim": "adam", "lr": 0.001, "weight_decay": 5e-4, "max_epoch": 15,
              "batch_size": 32, "lr_scheduler": "warmup_cosine", "warmup_epoch": 1,
              "warmup_factor": 0.1, "print_freq": 10, "seed": 1},
    "test": {"batch_size": 128, "eval_freq": -1, "ranks": [1, 5, 10],
             "compare_untrained": True},
    "sdtps": {"sie_camera": True, "use_amp": False},
}


def get_demo_config() -> CN:
    """Defaults with the embedded ``synthetic_demo`` settings merged in."""
    cfg = get_default_config()
    merge_from_dict(cfg, DEMO_OVERRIDES, source="the embedded synthetic_demo defaults")
    return cfg


def _synthetic_node() -> CN:
    """One key per :class:`~torchreid_sdtps.data.synthetic.SyntheticSpec` field, its default."""
    from .data.synthetic import SyntheticSpec

    node = CN()
    for key, value in SyntheticSpec().to_dict().items():
        node[key] = list(value) if isinstance(value, tuple) else value
    return node


def synthetic_spec(cfg: CN) -> Any:
    """The ``SyntheticSpec`` described by the ``synthetic`` node."""
    from .data.synthetic import SyntheticSpec

    return SyntheticSpec.from_dict({k: (tuple(v) if isinstance(v, list) else v)
                                    for k, v in cfg.synthetic.items()})


# ----------------------------------------------------------------------------- merging

def _removed_stage(key: str) -> Optional[str]:
    match = _REMOVED_RE.search(key.lower())
    return match.group(1).upper() if match else None


def _refuse_removed(full_key: str, source: str) -> None:
    stage = _removed_stage(full_key)
    if stage is not None:
        raise ConfigError(
            f"config key '{full_key}' in {source} asks for {stage}: SDTPS replaces HDM/ATM "
            "(DeMo's mixture-of-experts stages), which do not exist in torchreid-sdtps; "
            "remove the key (token selection is configured under 'sdtps')"
        )


def _unknown_key(full_key: str, node: CN, source: str) -> ConfigError:
    parent, _, leaf = full_key.rpartition(".")
    valid = sorted(node.keys())
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"; did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
    where = f"under '{parent}'" if parent else "at the top level"
    return ConfigError(f"unknown config key '{full_key}' in {source}{hint} "
                       f"(valid keys {where}: {', '.join(valid)})")


def _coerce(value: Any, original: Any, full_key: str, source: str) -> Any:
    if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # yacs would reject `lr: 1` against a float default
    if isinstance(original, (list, tuple)) and isinstance(value, (str, int, float)) \
            and not isinstance(value, bool):
        value = [value]  # `data.sources rgbnt201` means ['rgbnt201']
    if isinstance(original, bool) != isinstance(value, bool) and original is not None \
            and value is not None:
        raise ConfigError(f"config key '{full_key}' in {source} expects "
                          f"{type(original).__name__} (default {original!r}), got {value!r}")
    try:
        return _check_and_coerce_cfg_value_type(value, original, full_key.split(".")[-1],
                                                full_key)
    except ValueError:
        raise ConfigError(
            f"config key '{full_key}' in {source} expects {type(original).__name__} "
            f"(default {original!r}), got {type(value).__name__} {value!r}"
        ) from None


def _merge(node: CN, mapping: Mapping[str, Any], source: str, prefix: str) -> None:
    for key, value in mapping.items():
        full_key = f"{prefix}{key}"
        _refuse_removed(full_key, source)
        if not isinstance(key, str) or key not in node:
            raise _unknown_key(full_key, node, source)
        original = node[key]
        if isinstance(original, CN):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{full_key}' in {source} is a section; expected "
                                  f"a mapping of its keys, got {value!r}")
            _merge(original, value, source, full_key + ".")
            continue
        if isinstance(value, Mapping):
            raise ConfigError(f"config key '{full_key}' in {source} is a value, not a section "
                              f"(got a mapping {dict(value)!r})")
        node[key] = _coerce(CN._decode_cfg_value(copy.deepcopy(value)), original, full_key,
                            source)


def _check_removed_tree(mapping: Any, source: str, prefix: str = "") -> None:
    """Refuse HDM/ATM keys anywhere (before the unknown-key check, for a clearer message)."""
    if isinstance(mapping, Mapping):
        for key, value in mapping.items():
            full_key = f"{prefix}{key}"
            _refuse_removed(str(full_key), source)
            _check_removed_tree(value, source, f"{full_key}.")


def merge_from_dict(cfg: CN, mapping: Mapping[str, Any], source: str = "a mapping") -> CN:
    """Strictly merge a nested mapping into ``cfg`` (see the module doc); returns ``cfg``."""
    if cfg.is_frozen():
        raise ConfigError("the configuration is frozen; merge before freeze()")
    _check_removed_tree(mapping, source)
    _merge(cfg, mapping, source, "")
    return cfg


def merge_from_file(cfg: CN, path: str) -> CN:
    """Strictly merge the YAML file ``path`` into ``cfg``; errors name the file and the key."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file not found: '{path}'")
    with open(path, encoding="utf-8") as fh:
        try:
            loaded = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if loaded is None:
        return cfg
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got "
                          f"{type(loaded).__name__}")
    return merge_from_dict(cfg, loaded, source=f"config file '{path}'")


def merge_from_list(cfg: CN, opts: Sequence[str],
                    source: str = "command-line override") -> CN:
    """Merge ``KEY VALUE`` pairs (``train.lr 0.01 data.sources "['x']"``) strictly."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"{source}s must be KEY VALUE pairs; got an odd list {opts}")
    for full_key, value in zip(opts[0::2], opts[1::2]):
        nested: dict[str, Any] = {}
        node = nested
        parts = str(full_key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        merge_from_dict(cfg, nested, source=f"{source} '{full_key} {value}'")
    return cfg


def load_config(config_file: str = "", opts: Sequence[str] = (), root: str = "",
                demo: bool = False) -> CN:
    """Defaults (or the demo's) <- ``config_file`` <- ``--root`` <- ``opts``; frozen."""
    cfg = get_demo_config() if demo else get_default_config()
    if config_file:
        merge_from_file(cfg, config_file)
    if root:
        cfg.data.root = root
    merge_from_list(cfg, opts)
    check_config(cfg)
    cfg.freeze()
    return cfg


def check_config(cfg: CN) -> None:
    """Cross-key checks that single values cannot express."""
    if cfg.sdtps.selection not in ("topk", "gumbel"):
        raise ConfigError(f"sdtps.selection must be 'topk' or 'gumbel', got "
                          f"'{cfg.sdtps.selection}'")
    if cfg.sdtps.test_feature not in ("concat", "sdtps", "ori"):
        raise ConfigError(f"sdtps.test_feature must be concat, sdtps or ori, got "
                          f"'{cfg.sdtps.test_feature}'")
    if cfg.sampler.distributed not in SAMPLER_MODES:
        raise ConfigError(f"sampler.distributed must be one of {list(SAMPLER_MODES)}, got "
                          f"'{cfg.sampler.distributed}'")
    if cfg.data.type != "image":
        raise ConfigError(f"data.type must be 'image' (multi-modal image re-id), got "
                          f"'{cfg.data.type}'")
    if cfg.loss.name == "triplet" and cfg.loss.triplet.weight_x == 0 and cfg.train.fixbase_epoch:
        raise ConfigError("train.fixbase_epoch needs loss.triplet.weight_x > 0 (the classifier "
                          "is otherwise outside the graph)")
    for name in ("sources", "targets", "transforms", "ranks", "missing_settings"):
        node = cfg.test if name in ("ranks", "missing_settings") else cfg.data
        if isinstance(node[name], str):
            node[name] = [node[name]]


# ----------------------------------------------------------------------------- kwargs helpers

def imagedata_kwargs(cfg: CN) -> dict[str, Any]:
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


def model_kwargs(cfg: CN, num_cameras: int = 0) -> dict[str, Any]:
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
    }
    if cfg.sdtps.gumbel_tau is not None:
        kwargs["gumbel_tau"] = float(cfg.sdtps.gumbel_tau)
    return kwargs


def optimizer_kwargs(cfg: CN) -> dict[str, Any]:
    """``torchreid.optim.build_optimizer`` keyword arguments (torchreid's helper)."""
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
    }


def lr_scheduler_kwargs(cfg: CN) -> dict[str, Any]:
    """Keyword arguments of :func:`torchreid_sdtps.engine.runner.build_lr_scheduler`."""
    return {
        "lr_scheduler": cfg.train.lr_scheduler,
        "stepsize": list(cfg.train.stepsize),
        "gamma": cfg.train.gamma,
        "max_epoch": cfg.train.max_epoch,
        "warmup_epoch": cfg.train.warmup_epoch,
        "warmup_factor": cfg.train.warmup_factor,
        "min_lr_factor": cfg.train.min_lr_factor,
    }


def engine_kwargs(cfg: CN) -> dict[str, Any]:
    """Engine constructor keyword arguments (the runner passes those an engine accepts)."""
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
    }


def engine_run_kwargs(cfg: CN) -> dict[str, Any]:
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


def iter_keys(cfg: CN, prefix: str = "") -> Iterable[str]:
    """All leaf keys of ``cfg`` as dotted names."""
    for key, value in cfg.items():
        if isinstance(value, CN):
            yield from iter_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"
