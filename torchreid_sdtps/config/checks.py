"""Every value a user can type, checked in one place before any data or model is built.

:func:`check_values` runs inside ``config.load_config``: a value out of its range raises
:class:`~torchreid_sdtps.errors.ConfigError` with one line naming the key, the value and what
is allowed (the commands exit 2 with it). The ``sdtps`` model options, the engine's options and
the ``synthetic`` spec are checked by their own typed objects (``SDTPSOptions``,
``EngineOptions``, ``SyntheticSpec``), the rest by :data:`RULES`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .node import CfgNode

__all__ = ["RULES", "check_values"]


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > low), f"> {low:g}"


def _within(low: float, high: float, closed_high: bool = True) -> tuple[Callable[[Any], bool],
                                                                        str]:
    if closed_high:
        return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"
    return (lambda v: low <= v < high), f"in [{low:g}, {high:g})"


def _or_none(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    ok, text = rule
    return (lambda v: v is None or ok(v)), f"{text} or None"


def _each(rule: tuple[Callable[[Any], bool], str], size: int | None = None
          ) -> tuple[Callable[[Any], bool], str]:
    ok, text = rule
    count = f"{size} values, each " if size else "a non-empty list, each "
    return ((lambda v: isinstance(v, (list, tuple)) and len(v) > 0
             and (size is None or len(v) == size) and all(ok(x) for x in v)), count + text)


#: config key -> (check of its value, what is allowed)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.workers": _at_least(0),
    "data.split_id": _at_least(0),
    "data.height": _at_least(1),
    "data.width": _at_least(1),
    "data.k_tfm": _at_least(1),
    "data.norm_mean": _each(_within(0, 1), 3),
    "data.norm_std": _each(_above(0), 3),
    "data.flip_prob": _within(0, 1),
    "data.pad": _at_least(0),
    "data.erase_prob": _within(0, 1),
    "sampler.num_instances": _at_least(1),
    "sampler.num_cams": _at_least(1),
    "sampler.num_datasets": _at_least(1),
    "train.lr": _above(0),
    "train.weight_decay": _at_least(0),
    "train.max_epoch": _at_least(1),  # 0 would train nothing (and overwrite a run's results)
    "train.start_epoch": _at_least(0),
    "train.batch_size": _at_least(1),
    "train.fixbase_epoch": _at_least(0),
    "train.base_lr_mult": _at_least(0),
    "train.stepsize": _each(_at_least(1)),
    "train.gamma": _above(0),
    "train.warmup_epoch": _at_least(0),
    "train.warmup_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.min_lr_factor": _within(0, 1),
    "train.backbone_lr": _or_none(_above(0)),
    "train.bias_lr_factor": _at_least(0),
    "train.weight_decay_bias": _or_none(_at_least(0)),
    "train.lr_noise_pct": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.lr_noise_std": _above(0),
    "train.lr_noise_seed": _within(0, 2 ** 32 - 1),
    "train.print_freq": _at_least(1),
    "train.seed": _within(0, 2 ** 32 - 1),
    "sgd.momentum": _within(0, 1, closed_high=False),
    "sgd.dampening": _within(0, 1),
    "rmsprop.alpha": _within(0, 1, closed_high=False),
    "adam.beta1": _within(0, 1, closed_high=False),
    "adam.beta2": _within(0, 1, closed_high=False),
    "test.batch_size": _at_least(1),
    "test.ranks": _each(_at_least(1)),
    "test.start_eval": _at_least(0),
    "test.visrank_topk": _at_least(1),
}


def _value(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _patch_size(model_name: str) -> int | None:
    """Patch size of a registered SDTPS model name's backbone (None for other models)."""
    from ..models.backbone import VARIANTS

    spec = VARIANTS.get(model_name.removeprefix("sdtps_")) if model_name.startswith(
        "sdtps_") else None
    return None if spec is None else int(spec.timm_kwargs["patch_size"])


def check_values(cfg: CfgNode) -> None:
    """Raise :class:`ConfigError` (one line: key, value, what is allowed) for the first value
    out of its range (see the module doc)."""
    for key, (ok, allowed) in RULES.items():
        value = _value(cfg, key)
        try:
            good = bool(ok(value))
        except TypeError:  # e.g. None where a number is needed
            good = False
        if not good:
            raise ConfigError(f"{key} {value!r}: must be {allowed}")
    patch = _patch_size(str(cfg.model.name))
    override = cfg.sdtps.get("patch_size") if patch else None
    if override:  # sdtps.patch_size replaces the backbone's own
        patch, whose = int(override), f"the patch size sdtps.patch_size gives {cfg.model.name}"
    else:
        whose = f"the patch size of {cfg.model.name}"
    for key in ("data.height", "data.width"):
        if patch and _value(cfg, key) % patch:
            raise ConfigError(f"{key} {_value(cfg, key)!r}: must be a multiple of {patch}, "
                              f"{whose}")
    from ..engine.options import EngineOptions
    from .adapters import engine_kwargs
    from .defaults import synthetic_spec

    EngineOptions.from_dict(engine_kwargs(cfg))  # loss weights, margins, dropout, ...
    try:
        synthetic_spec(cfg)
    except ConfigError as exc:  # name the config key, not the dataclass field
        raise ConfigError(str(exc).replace("SyntheticSpec.", "synthetic.", 1)) from None
