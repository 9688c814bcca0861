"""Strict loading of a checkpoint into a model (part of :mod:`torchreid_sdtps.checkpoint`)."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .files import CheckpointMismatchError, read_checkpoint, state_dict_of
from .meta import checkpoint_meta, describe_meta, meta_of, unwrap_model

logger = logging.getLogger(__name__)

#: how many keys of each kind an error message lists
_SHOWN = 5
#: model options that change what a model computes without changing any weight's shape, and
#: the data keys of its input: the weights load whatever they are, so a difference from the
#: checkpoint's training values is reported (:attr:`LoadReport.changed_settings`, a warning)
WEIGHTLESS_OPTIONS = ("ratio", "beta", "sie_coe", "mask_missing", "missing_match")
INPUT_KEYS = ("height", "width", "norm_mean", "norm_std")

# ----------------------------------------------------------------------------- load into a model

@dataclass
class LoadReport:
    """What :func:`load_into_model` did: keys loaded and (``strict=False`` only) skipped."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"
    meta: dict[str, Any] | None = None
    #: "sdtps.ratio: checkpoint 0.5, model 0.3": settings that differ from the training run's
    changed_settings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model key loaded and nothing left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """``"12 missing, 5 unexpected, 3 mismatched keys; missing: a, b, ..."``."""
        counts = ", ".join(f"{len(v)} {k}" for k, v in self._groups())
        lists = "; ".join(f"{k}: {_shorten(v)}" for k, v in self._groups() if v)
        return f"{counts} keys" + (f"; {lists}" if lists else "")

    def _groups(self) -> list[tuple[str, list[str]]]:
        return [("missing", self.missing), ("unexpected", self.unexpected),
                ("mismatched", self.mismatched)]


def changed_settings(trained: Mapping[str, Any] | None, model: Mapping[str, Any] | None
                     ) -> list[str]:
    """The :data:`WEIGHTLESS_OPTIONS` and :data:`INPUT_KEYS` whose values in the model's meta
    differ from the checkpoint's (a key either meta lacks is not compared)."""
    if not trained or not model:
        return []
    pairs = [(f"sdtps.{k}", trained.get("model_kwargs", {}), model.get("model_kwargs", {}), k)
             for k in WEIGHTLESS_OPTIONS]
    pairs += [(f"data.{k}", trained, model, k) for k in INPUT_KEYS]
    return [f"{name}: checkpoint {a[k]!r}, model {b[k]!r}" for name, a, b, k in pairs
            if k in a and k in b and a[k] != b[k]]


def _shorten(keys: Sequence[str]) -> str:
    more = f", ... (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def load_into_model(model: torch.nn.Module, source: str | os.PathLike | Mapping[str, Any],
                    strict: bool = True, model_name: str | None = None,
                    allow_unsafe_pickle: bool | None = None,
                    source_name: str | None = None) -> LoadReport:
    """Load the weights of ``source`` (a path or a loaded checkpoint/state dict) into ``model``.

    ``strict=True``: every parameter and buffer of ``model`` must come from the checkpoint with
    the same shape and the checkpoint may hold nothing else, else :class:`CheckpointMismatchError`
    with the counts, the first keys of each kind and the model the checkpoint's meta names
    (``model_name`` names ``model`` in that message; default: the model's own meta, see
    :func:`attach_meta`). ``strict=False`` loads what fits and logs a warning with what was
    skipped. ``source_name`` names an already loaded ``source`` (its path) in messages.
    Returns a :class:`LoadReport`.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source_name
    where = f"checkpoint '{name}'" if name else "checkpoint"
    ckpt = (read_checkpoint(source, allow_unsafe_pickle)
            if isinstance(source, (str, os.PathLike)) else source)
    state = state_dict_of(ckpt, where)
    meta = checkpoint_meta(ckpt) if isinstance(ckpt, Mapping) else None
    target = unwrap_model(model)
    own = target.state_dict()
    report = LoadReport(source=where, meta=meta)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [f"{k}: checkpoint {_shape(state[k])} vs model {_shape(own[k])}"
                         for k in own if k in state and state[k].shape != own[k].shape]
    bad = {m.split(":", 1)[0] for m in report.mismatched}
    report.loaded = [k for k in own if k in state and k not in bad]
    this = model_name or describe_meta(meta_of(target)) or type(target).__name__
    if not report.complete:
        holds = describe_meta(meta)
        text = (f"{where} does not fit model {this}: {report.summary()}"
                + (f"; the checkpoint holds {holds}" if holds else ""))
        if strict:
            raise CheckpointMismatchError(text)
        logger.warning("partial load (strict=False): %s; %d of %d model keys loaded, the rest "
                       "keep their initial values", text, len(report.loaded), len(own))
    target.load_state_dict({**own, **{k: state[k] for k in report.loaded}}, strict=True)
    report.changed_settings = changed_settings(meta, meta_of(target))
    if report.changed_settings:
        logger.warning("%s was trained with other settings than model %s uses now (its weights "
                       "fit, its features will differ from the training run's): %s", where, this,
                       "; ".join(report.changed_settings))
    return report
