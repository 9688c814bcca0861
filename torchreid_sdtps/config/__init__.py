"""yacs configuration in torchreid's own key layout plus ``sdtps`` and ``synthetic`` nodes.

- :mod:`.defaults`: the default and the demo configuration;
- :mod:`.node`: :class:`CfgNode`, strict merging (unknown keys with the nearest valid one,
  HDM/ATM/MoE refused, ``_BASE_`` inheritance) on top of yacs's own merge;
- :mod:`.adapters`: the ``*_kwargs`` helpers feeding torchreid and the plugin's builders.

:func:`load_config` is what the command-line tools call: defaults (or the demo's) <- file <-
``--root`` <- ``KEY VALUE`` overrides, then the cross-key checks, frozen.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..choices import HEAD_REDUCTIONS, REMOVED_STAGES, SAMPLER_MODES, TRANSFORM_STYLES
from ..errors import ConfigError
from .adapters import (
    IMAGEDATA_KEYS,
    config_value,
    engine_kwargs,
    engine_run_kwargs,
    imagedata_kwargs,
    lr_scheduler_kwargs,
    make_meta,
    model_kwargs,
    optimizer_kwargs,
)
from .checks import check_values
from .defaults import (
    DEMO_CONFIG,
    get_default_config,
    get_demo_config,
    model_options,
    synthetic_spec,
)
from .node import BASE_KEY, CfgNode, iter_keys

__all__ = [
    "CfgNode", "ConfigError", "get_default_config", "get_demo_config", "DEMO_CONFIG", "BASE_KEY",
    "load_config", "check_config", "iter_keys", "imagedata_kwargs", "model_kwargs",
    "optimizer_kwargs", "lr_scheduler_kwargs", "engine_kwargs", "engine_run_kwargs", "synthetic_spec",
    "model_options", "make_meta", "IMAGEDATA_KEYS", "config_value",
    "REMOVED_STAGES", "SAMPLER_MODES",
]


def load_config(config_file: str = "", opts: Sequence[str] = (), root: str = "",
                demo: bool = False) -> CfgNode:
    """Defaults (or the demo's) <- ``config_file`` <- ``root`` <- ``opts``; checked, frozen."""
    cfg = get_demo_config() if demo else get_default_config()
    if config_file:
        cfg.merge_from_file(config_file)
    if root:
        cfg.data.root = root
    cfg.merge_from_list(opts)
    check_config(cfg)
    cfg.freeze()
    return cfg


def check_config(cfg: CfgNode) -> None:
    """Every value in its range (:func:`.checks.check_values`), then the cross-key and choice
    checks that single typed values cannot express."""
    model_options(cfg)  # the sdtps node's model options (SDTPSOptions checks each)
    check_values(cfg)  # numbers in range, the engine's options, the synthetic spec
    for key, value, choices in (("loss.head_reduction", cfg.loss.head_reduction, HEAD_REDUCTIONS),
                                ("data.transform_style", cfg.data.transform_style,
                                 TRANSFORM_STYLES),
                                ("sampler.distributed", cfg.sampler.distributed,
                                 SAMPLER_MODES),
                                ("data.type", cfg.data.type, ("image",))):
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got '{value}'")
    if not cfg.sdtps.use_sdtps:  # the model without the SDTPS block: its options cannot act
        # (test_feature 'sdtps' is refused by SDTPSOptions itself)
        unusable = {"weight_align": cfg.sdtps.weight_align > 0,
                    "selection": cfg.sdtps.selection != "topk"}
        plain = {"weight_align": "0", "selection": "topk"}
        for key in (k for k, bad in unusable.items() if bad):
            raise ConfigError(f"sdtps.{key} {cfg.sdtps[key]!r} needs the SDTPS block; with "
                              f"sdtps.use_sdtps False set sdtps.{key} {plain[key]}")
    if cfg.data.transform_style == "torchreid":
        default = get_default_config().data
        changed = [k for k in ("flip_prob", "pad", "erase_prob") if cfg.data[k] != default[k]]
        if changed:
            raise ConfigError(f"data.{changed[0]} is used by data.transform_style demo only; "
                              "torchreid's build_transforms has fixed values")
    if cfg.loss.name == "triplet" and cfg.loss.triplet.weight_x == 0 and cfg.train.fixbase_epoch:
        raise ConfigError("train.fixbase_epoch needs loss.triplet.weight_x > 0 (the classifier "
                          "is otherwise outside the graph)")
    for node, name in ((cfg.data, "sources"), (cfg.data, "targets"), (cfg.data, "transforms"),
                       (cfg.test, "ranks"), (cfg.test, "missing_settings")):
        if isinstance(node[name], str):
            node[name] = [node[name]]
