"""Pretrained weights for a :class:`~torchreid_sdtps.models.backbone.ViTBackbone`.

``load_pretrained(backbone, source, variant)`` finds a checkpoint (:mod:`.fetch`: the variant's
published file, downloaded once into the torch hub cache, or a local path), reads it
(:mod:`.read`: every published container), converts it to timm's key names and loads it
(:mod:`.convert`).

``torch.load(weights_only=False)`` (a file that pickles Python objects) runs code from the
file; it is used only when the caller opts in with ``allow_unsafe_pickle=True`` or the
environment variable ``TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE=1``.
"""
from __future__ import annotations

from .convert import load_pretrained
from .fetch import (
    PRETRAINED_FILES,
    PretrainedDownloadError,
    PretrainedFile,
    cached_path,
    download_pretrained,
)
from .read import (
    EXPECTED_FORMATS,
    UNSAFE_PICKLE_ENV,
    UnsafePickleError,
    WeightsFormatError,
    read_weights,
)

__all__ = [
    "PretrainedFile", "PRETRAINED_FILES", "PretrainedDownloadError", "WeightsFormatError",
    "UnsafePickleError", "UNSAFE_PICKLE_ENV", "EXPECTED_FORMATS", "cached_path",
    "download_pretrained", "read_weights", "load_pretrained",
]
