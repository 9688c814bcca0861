"""Checkpoint files: the errors, safe reading (``weights_only`` + the NumPy allow-list),
unwrapping to a state dict, and atomic saving (part of :mod:`torchreid_sdtps.checkpoint`)."""
from __future__ import annotations

import contextlib
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SDTPSError
from ..io import atomic_path

logger = logging.getLogger(__name__)

UNSAFE_PICKLE_ENV = "TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE"
#: version of the ``meta`` entry this module writes and reads
META_FORMAT = 1

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
    process-wide allow-list (``patches.allow_checkpoint_globals``) survives the block.
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


def check_plain(obj: Any, where: str = "meta") -> None:
    """Refuse (TypeError: a programming error) meta values ``weights_only=True`` cannot read."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (bool, int, float, str))):
        raise TypeError(f"checkpoint {where} is a {type(obj).__name__}; meta holds plain types "
                        "only (readable with weights_only=True)")


# ----------------------------------------------------------------------------- save

def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike,
                    meta: Mapping[str, Any] | None = None) -> str:
    """Write ``state`` (torchreid's keys: ``state_dict``, ``epoch``, ``optimizer``...) plus
    ``meta`` to ``path`` atomically (a complete file or none; the user's umask); returns the path."""
    path = os.fspath(path)
    out = dict(state)
    if meta is not None:
        check_plain(dict(meta))
        out["meta"] = dict(meta)
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return path
