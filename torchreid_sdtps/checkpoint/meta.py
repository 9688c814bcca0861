"""Checkpoint meta: what a checkpoint needs to rebuild its model and to say which model it
holds (part of :mod:`torchreid_sdtps.checkpoint`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..choices import MODALITIES
from .files import META_FORMAT, CheckpointError, check_plain

# ----------------------------------------------------------------------------- meta

def make_meta(model_name: str, num_classes: int, num_cameras: int, options: Mapping[str, Any],
              height: int, width: int, norm_mean: Sequence[float], norm_std: Sequence[float],
              sources: Sequence[str] = (), config_text: str = "",
              modalities: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model without the config, in plain types (so
    ``weights_only=True`` reads it): model name and options (an ``SDTPSOptions.to_dict()``),
    classes, SIE cameras, image size, normalisation, modalities, training sets and the config's
    text (``config.make_meta`` builds it from a config)."""
    options = dict(options)
    options["backbone_weights"] = ""  # the checkpoint holds the weights
    if not options.get("sie_camera", True):
        num_cameras = 0
    kwargs = {"img_size": [int(height), int(width)], "num_cameras": int(num_cameras), **options}
    return {
        "format": META_FORMAT,
        "model_name": str(model_name),
        "num_classes": int(num_classes),
        "num_cameras": int(num_cameras),
        "model_kwargs": kwargs,
        "height": int(height),
        "width": int(width),
        "norm_mean": [float(x) for x in norm_mean],
        "norm_std": [float(x) for x in norm_std],
        "modalities": list(modalities),
        "sources": list(sources),
        "config": str(config_text),
    }


#: options the previous release stored in checkpoints under other names -> field name
LEGACY_OPTION_NAMES: dict[str, str] = {"sdtps_ratio": "ratio", "drop_path_rate": "drop_path"}


def upgrade_legacy_names(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with :data:`LEGACY_OPTION_NAMES` renamed and the old "unset"
    ``gumbel_tau: None`` dropped (the default then applies): reads old checkpoints' meta."""
    out = {LEGACY_OPTION_NAMES.get(k, k): v for k, v in options.items()}
    if "gumbel_tau" in out and out["gumbel_tau"] is None:
        del out["gumbel_tau"]
    return out


def checkpoint_meta(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``meta`` entry of ``ckpt`` (None for torchreid's stock checkpoints and bare state
    dicts); :class:`CheckpointError` for a meta format this version cannot read."""
    meta = ckpt.get("meta") if isinstance(ckpt, Mapping) else None
    if not isinstance(meta, dict):
        return None
    if meta.get("format") != META_FORMAT:
        raise CheckpointError(f"checkpoint meta format {meta.get('format')!r} is not the "
                              f"supported {META_FORMAT} (written by another version)")
    return _upgrade_legacy_meta(meta)


#: options a checkpoint written before they existed was trained with (the then only behaviour),
#: whatever today's default: a checkpoint without ``head`` holds the seed review's mean head
PRE_OPTION_VALUES: dict[str, Any] = {"head": "mean"}


def _upgrade_legacy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` (a copy when changed) with the previous release's option names renamed in its
    ``model_kwargs`` and stored config, and the options it predates (:data:`PRE_OPTION_VALUES`)
    set to the behaviour it was trained with, so its checkpoints still rebuild their model."""
    kwargs, cfg_text = meta.get("model_kwargs"), meta.get("config")
    if not isinstance(kwargs, dict):
        return meta
    missing = {k: v for k, v in PRE_OPTION_VALUES.items() if k not in kwargs}
    if not (set(kwargs) & set(LEGACY_OPTION_NAMES) or missing):
        return meta

    def upgrade(options: dict[str, Any]) -> dict[str, Any]:
        return {**upgrade_legacy_names(options), **missing}

    meta = {**meta, "model_kwargs": upgrade(kwargs)}
    if isinstance(cfg_text, str):
        import yaml

        tree = yaml.safe_load(cfg_text)
        if isinstance(tree, dict) and isinstance(tree.get("sdtps"), dict):
            meta["config"] = yaml.safe_dump({**tree, "sdtps": upgrade(tree["sdtps"])})
    return meta


def describe_meta(meta: Mapping[str, Any] | None) -> str | None:
    """``"sdtps_vit_tiny (num_classes 40)"``: the model a checkpoint's meta says it holds."""
    if not meta or "model_name" not in meta:
        return None
    extra = [f"num_classes {meta['num_classes']}"] if "num_classes" in meta else []
    if meta.get("num_cameras"):
        extra.append(f"num_cameras {meta['num_cameras']}")
    return f"{meta['model_name']}" + (f" ({', '.join(extra)})" if extra else "")


_META_ATTR = "_sdtps_checkpoint_meta"


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


def attach_meta(model: torch.nn.Module, meta: Mapping[str, Any]) -> torch.nn.Module:
    """Record on ``model`` the meta its checkpoints carry (:func:`make_meta`): the engine saves
    :func:`meta_of` its model, and a strict load names the model in its errors."""
    check_plain(dict(meta))
    setattr(unwrap_model(model), _META_ATTR, dict(meta))
    return model


def meta_of(model: torch.nn.Module) -> dict[str, Any] | None:
    """The meta :func:`attach_meta` recorded on ``model`` (through a DDP wrapper), if any."""
    return getattr(unwrap_model(model), _META_ATTR, None)
