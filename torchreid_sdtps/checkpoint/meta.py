"""Checkpoint meta: what a checkpoint needs to rebuild its model and to say which model it
holds (part of :mod:`torchreid_sdtps.checkpoint`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..choices import MODALITIES
from .files import META_FORMAT, CheckpointError, check_plain

# ----------------------------------------------------------------------------- meta

def make_meta(cfg: Any, num_classes: int, num_cameras: int,
              modalities: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model without the config, in plain types (so
    ``weights_only=True`` reads it): model name and options, classes, SIE cameras, image size,
    normalisation, modalities, training sets and the whole config."""
    from .. import config

    kwargs = config.model_kwargs(cfg, num_cameras=num_cameras)
    options = kwargs["options"].to_dict()
    options["backbone_weights"] = ""  # the checkpoint holds the weights
    if not options["sie_camera"]:
        num_cameras = 0
    kwargs = {"img_size": list(kwargs["img_size"]), "num_cameras": int(num_cameras), **options}
    return {
        "format": META_FORMAT,
        "model_name": str(cfg.model.name),
        "num_classes": int(num_classes),
        "num_cameras": int(num_cameras),
        "model_kwargs": kwargs,
        "height": int(cfg.data.height),
        "width": int(cfg.data.width),
        "norm_mean": [float(x) for x in cfg.data.norm_mean],
        "norm_std": [float(x) for x in cfg.data.norm_std],
        "modalities": list(modalities),
        "sources": list(cfg.data.sources),
        "config": cfg.dump(),
    }


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


def _upgrade_legacy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` (a copy when changed) with the previous release's option names renamed in its
    ``model_kwargs`` and stored config, so its checkpoints still rebuild their model."""
    from ..models.options import LEGACY_OPTION_NAMES, upgrade_legacy_names

    kwargs, cfg_text = meta.get("model_kwargs"), meta.get("config")
    if not (isinstance(kwargs, dict) and set(kwargs) & set(LEGACY_OPTION_NAMES)):
        return meta
    meta = {**meta, "model_kwargs": upgrade_legacy_names(kwargs)}
    if isinstance(cfg_text, str):
        import yaml

        tree = yaml.safe_load(cfg_text)
        if isinstance(tree, dict) and isinstance(tree.get("sdtps"), dict):
            meta["config"] = yaml.safe_dump({**tree, "sdtps": upgrade_legacy_names(tree["sdtps"])})
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
