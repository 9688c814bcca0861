"""Reading a pretrained-weights file into a flat state dict, whatever container it comes in.

OpenAI TorchScript archives are read with ``torch.jit.load`` (its restricted unpickler only
rebuilds TorchScript modules); JAX ``.npz`` files are left to timm's loader; everything else
goes through the project's safe loader (:func:`torchreid_sdtps.checkpoint.load_file`:
``weights_only=True``, ``weights_only=False`` only when opted in) and
:func:`~torchreid_sdtps.checkpoint.state_dict_of` (``state_dict``/``model`` wrappers,
``module.`` prefixes).
"""
from __future__ import annotations

import logging
import os
import warnings
import zipfile

import torch

from ...checkpoint import (
    UNSAFE_PICKLE_ENV,
    CheckpointError,
    CheckpointNotFoundError,
    UnsafePickleError,
    load_file,
    state_dict_of,
)

__all__ = ["WeightsFormatError", "UnsafePickleError", "UNSAFE_PICKLE_ENV", "EXPECTED_FORMATS",
           "read_weights"]

logger = logging.getLogger(__name__)

EXPECTED_FORMATS = (
    "an OpenAI CLIP TorchScript archive or state dict (visual.* keys), a timm/PyTorch state dict "
    "(.pth/.pt/.bin; optionally under 'state_dict'/'model', 'module.' prefixes allowed), "
    "or a JAX/timm .npz checkpoint (augreg)")


class WeightsFormatError(CheckpointError):
    """A weights file is not in a supported format or does not fit the backbone."""


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
    """:func:`state_dict_of` with the formats this reader accepts in its errors."""
    try:
        return state_dict_of(obj, f"checkpoint {path}")
    except CheckpointError as exc:
        raise WeightsFormatError(f"{exc}. Expected {EXPECTED_FORMATS}.") from exc


def _torch_load(path: str, allow_unsafe_pickle: bool | None) -> object:
    try:
        return load_file(path, allow_unsafe_pickle)
    except UnsafePickleError:
        raise
    except CheckpointError as exc:
        raise WeightsFormatError(f"{exc}. Expected {EXPECTED_FORMATS}.") from exc


def _zip_names(path: str) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def read_weights(path: str, allow_unsafe_pickle: bool | None = None
                    ) -> tuple[str, dict[str, torch.Tensor] | None]:
    """Read ``path``; return ``("npz", None)`` or ``(kind, state_dict)`` with kind "jit"/"torch".

    TorchScript archives (the format OpenAI publishes CLIP in) are read with ``torch.jit.load``,
    whose restricted unpickler only rebuilds TorchScript modules; other files with
    :func:`~torchreid_sdtps.checkpoint.load_file` (``allow_unsafe_pickle``: see
    :func:`~torchreid_sdtps.models.weights.load_pretrained`).
    """
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"pretrained weights file not found: {path}")
    names = _zip_names(path)
    if names and all(n.endswith(".npy") for n in names):
        return "npz", None
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        try:  # OpenAI CLIP publishes TorchScript archives
            with warnings.catch_warnings():  # torch>=2.9 flags TorchScript as deprecated; it is the published format
                warnings.simplefilter("ignore", FutureWarning)
                archive = torch.jit.load(path, map_location="cpu")
            return "jit", _unwrap(archive.state_dict(), path)
        except RuntimeError:
            logger.debug("%s is not a loadable TorchScript archive; trying torch.load", path)
    return "torch", _unwrap(_torch_load(path, allow_unsafe_pickle), path)
