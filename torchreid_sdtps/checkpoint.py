"""The one checkpoint contract: save with meta, safe read, unwrap, strict load into a model.

Checkpoints keep torchreid's keys (``state_dict``, ``epoch``, ``optimizer``, ``scheduler``,
``rank1``...) so torchreid's own ``load_checkpoint`` / ``resume_from_checkpoint`` /
``load_pretrained_weights`` still read them; this project adds a ``meta`` entry (model name and
options, classes, cameras, image size, normalisation, config: :func:`make_meta`) that lets a
checkpoint rebuild its model and say which model it holds.

Reading uses ``torch.load(weights_only=True)`` with an allow-list of the NumPy scalar types
torchreid's stock engines pickle (:func:`safe_globals`); ``weights_only=False`` (a file that
pickles Python objects, which runs code from the file) only when the caller opts in with
``allow_unsafe_pickle=True`` or ``TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE=1``.

Loading into a model is strict by default: every parameter and buffer of the model must come
from the checkpoint with the same shape, and the checkpoint must hold nothing else; otherwise
:class:`CheckpointMismatchError` lists what is missing, unexpected or mis-shaped and which model
the checkpoint holds. torchreid's ``load_pretrained_weights`` instead drops what does not fit,
which ranks an untrained network without a word.
"""
from __future__ import annotations

import contextlib
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .choices import MODALITIES
from .errors import SDTPSError
from .io import atomic_path

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "CheckpointMismatchError", "UnsafePickleError",
    "UNSAFE_PICKLE_ENV", "META_FORMAT", "LoadReport",
    "save_checkpoint", "read_checkpoint", "load_file", "checkpoint_meta", "make_meta",
    "describe_meta", "attach_meta", "meta_of", "state_dict_of", "load_into_model", "safe_globals", "safe_loading",
    "unsafe_pickle_allowed",
]

logger = logging.getLogger(__name__)

#: environment variable that opts in to ``torch.load(weights_only=False)`` (value ``1``)
UNSAFE_PICKLE_ENV = "TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE"
#: version of the ``meta`` entry this module writes and reads
META_FORMAT = 1
#: how many keys of each kind an error message lists
_SHOWN = 5


class CheckpointError(SDTPSError, ValueError):
    """A checkpoint file is unreadable, truncated or not a checkpoint; the message names it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path names no file."""


class CheckpointMismatchError(CheckpointError):
    """A strict load failed: the checkpoint's keys or shapes do not match the model's."""


class UnsafePickleError(CheckpointError):
    """A file needs ``torch.load(weights_only=False)`` and the caller did not opt in."""


# ----------------------------------------------------------------------------- reading

def safe_globals() -> list:
    """NumPy scalar and dtype types that torchreid's stock engines pickle (a NumPy ``rank1``).

    They hold plain numbers, so allow-listing them keeps ``weights_only=True`` safe while
    accepting torchreid's files.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # NumPy 2 / NumPy 1
    types = [core.multiarray.scalar, np.dtype]
    types += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)]
    return types


def safe_loading() -> contextlib.AbstractContextManager:
    """Context in which ``torch.load(weights_only=True)`` accepts :func:`safe_globals`.

    torch's context removes its globals on exit, so only those not yet allowed are passed: a
    process-wide allow-list (``compat.allow_checkpoint_globals``) survives the block.
    """
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.4: no safe-loader default to satisfy
        return contextlib.nullcontext()
    allowed = torch.serialization.get_safe_globals()
    return safe([t for t in safe_globals() if t not in allowed])


def unsafe_pickle_allowed(allow: bool | None = None) -> bool:
    """The explicit argument wins; else the environment variable :data:`UNSAFE_PICKLE_ENV`."""
    if allow is not None:
        return bool(allow)
    value = os.environ.get(UNSAFE_PICKLE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise CheckpointError(f"environment variable {UNSAFE_PICKLE_ENV}={value!r}: expected "
                          "1/true/yes or 0/false/no")


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """``"Type: first sentence"`` of ``exc`` (torch's messages run on for lines)."""
    text = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(exc).__name__}: {text[:limit]}".rstrip(": ")


def _unreadable(path: str, exc: BaseException) -> CheckpointError:
    """One line naming ``path`` and what is wrong with it."""
    size = osp.getsize(path)
    if size == 0:
        what = "the file is empty"
    elif zipfile.is_zipfile(path) or _starts_like_zip(path):
        what = f"truncated or corrupt torch archive ({size} bytes; {_first_line(exc)})"
    else:
        what = f"not a checkpoint torch can read ({_first_line(exc)})"
    return CheckpointError(f"cannot read checkpoint '{path}': {what}")


def _starts_like_zip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load_file(path: str | os.PathLike, allow_unsafe_pickle: bool | None = None) -> Any:
    """``torch.load`` of ``path`` on the CPU, safely (``weights_only=True`` + the allow-list).

    Raises :class:`CheckpointNotFoundError`, :class:`UnsafePickleError` (the file pickles Python
    objects and the caller did not opt in) or :class:`CheckpointError` (unreadable), each
    naming the file.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: '{path}'")
    try:
        with safe_loading():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise _unreadable(path, exc) from exc
        if not unsafe_pickle_allowed(allow_unsafe_pickle):
            raise UnsafePickleError(
                f"checkpoint '{path}' pickles Python objects besides tensors ({found.group(1)}), "
                "so reading it needs torch.load(weights_only=False), which can run arbitrary "
                "code from the file. If you trust the file, opt in with "
                f"allow_unsafe_pickle=True or set {UNSAFE_PICKLE_ENV}=1; or re-save just its "
                "state dict.") from exc
    except Exception as exc:  # noqa: BLE001 - zip/EOF/runtime errors of a corrupt file
        raise _unreadable(path, exc) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from exc
    logger.warning("%s was loaded with torch.load(weights_only=False) as opted in "
                   "(allow_unsafe_pickle)", path)
    return obj


def read_checkpoint(path: str | os.PathLike, allow_unsafe_pickle: bool | None = None
                    ) -> dict[str, Any]:
    """The checkpoint dict of ``path`` (a bare state dict is a dict too), read safely;
    :class:`CheckpointError` naming the path on any failure."""
    obj = load_file(path, allow_unsafe_pickle)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{os.fspath(path)}' holds a {type(obj).__name__}; "
                              "expected a dict (torchreid's {'state_dict': ...} or a state dict)")
    return obj


# ----------------------------------------------------------------------------- unwrap

def state_dict_of(ckpt: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` weights of ``ckpt``: under ``state_dict`` / ``model`` (nested
    too), or ``ckpt`` itself; ``module.`` prefixes (DataParallel/DDP) removed.

    ``where`` names the source in errors (a path).
    """
    obj = ckpt
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}, ...
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state_dict")
                      if isinstance(obj.get(k), (Mapping, torch.nn.Module))), None)
        if inner is None:
            break
        obj = inner.state_dict() if isinstance(inner, torch.nn.Module) else inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{where} contains no tensors (keys: {list(obj)[:8]})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ----------------------------------------------------------------------------- meta

def make_meta(cfg: Any, num_classes: int, num_cameras: int,
              modalities: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model without the config, in plain types (so
    ``weights_only=True`` reads it): model name and options, classes, SIE cameras, image size,
    normalisation, modalities, training sets and the whole config."""
    from . import config

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
    return meta


def describe_meta(meta: Mapping[str, Any] | None) -> str | None:
    """``"sdtps_vit_tiny (num_classes 40)"``: the model a checkpoint's meta says it holds."""
    if not meta or "model_name" not in meta:
        return None
    extra = [f"num_classes {meta['num_classes']}"] if "num_classes" in meta else []
    if meta.get("num_cameras"):
        extra.append(f"num_cameras {meta['num_cameras']}")
    return f"{meta['model_name']}" + (f" ({', '.join(extra)})" if extra else "")


def _check_plain(obj: Any, where: str = "meta") -> None:
    """Refuse (TypeError: a programming error) meta values ``weights_only=True`` cannot read."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (bool, int, float, str))):
        raise TypeError(f"checkpoint {where} is a {type(obj).__name__}; meta holds plain types "
                        "only (readable with weights_only=True)")


_META_ATTR = "_sdtps_checkpoint_meta"


def _target(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model


def attach_meta(model: torch.nn.Module, meta: Mapping[str, Any]) -> torch.nn.Module:
    """Record on ``model`` the meta its checkpoints carry (:func:`make_meta`): the engine saves
    :func:`meta_of` its model, and a strict load names the model in its errors."""
    _check_plain(dict(meta))
    setattr(_target(model), _META_ATTR, dict(meta))
    return model


def meta_of(model: torch.nn.Module) -> dict[str, Any] | None:
    """The meta :func:`attach_meta` recorded on ``model`` (through a DDP wrapper), if any."""
    return getattr(_target(model), _META_ATTR, None)


# ----------------------------------------------------------------------------- save

def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike,
                    meta: Mapping[str, Any] | None = None) -> str:
    """Write ``state`` (torchreid's keys: ``state_dict``, ``epoch``, ``optimizer``...) plus
    ``meta`` to ``path`` atomically (a complete file or none; the user's umask); returns the path."""
    path = os.fspath(path)
    out = dict(state)
    if meta is not None:
        _check_plain(dict(meta))
        out["meta"] = dict(meta)
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return path


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
    target = _target(model)
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
    return report

