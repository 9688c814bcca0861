"""Feature sets in memory and the ``.pt`` feature file.

A :class:`FeatureSet` holds ``features (N, D)``, ``pids``, ``camids``, ``cam_labels`` (``-1`` =
unknown), ``paths`` (one tuple of M paths per sample) and ``info``: the data set / folder and
``provenance``, how the features were made (:mod:`.provenance`). :func:`save_features` writes it
as one ``torch.save`` file (atomically; readable with ``weights_only=True``); the one reader of
feature stores and feature files is :func:`torchreid_sdtps.deploy.store.load_features`, the one
search :func:`torchreid_sdtps.deploy.exact.topk_exact`.
"""
from __future__ import annotations

import dataclasses
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import SDTPSError
from ..io import atomic_path

#: ``FeatureSet.info`` key: per row, the names of the modalities that sample lacks
MISSING_KEY = "missing_modalities"

__all__ = ["FeatureSet", "MISSING_KEY", "FeatureFileError", "FeatureFileNotFoundError", "FILE_KEYS",
           "save_features", "extract_samples", "folder_samples"]


class FeatureFileError(SDTPSError, ValueError):
    """A feature file that cannot be read, or features of inconsistent shapes."""


class FeatureFileNotFoundError(FeatureFileError, FileNotFoundError):
    """A feature file, or a folder of images to extract, that does not exist."""


@dataclasses.dataclass
class FeatureSet:
    """Features of N samples with their ids, camera ids and image paths."""

    features: torch.Tensor  # (N, D) float32
    pids: list[int]
    camids: list[int]
    cam_labels: list[int]
    paths: list[tuple[str, ...]]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.features.shape[0] if self.features.dim() == 2 else -1
        lengths = {k: len(getattr(self, k)) for k in ("pids", "camids", "cam_labels", "paths")}
        if n < 0 or any(v != n for v in lengths.values()):
            raise FeatureFileError(f"FeatureSet: features of shape {tuple(self.features.shape)} "
                                   f"(expected (N, D)) with lengths {lengths}; all must be N")

    def __len__(self) -> int:
        return self.features.shape[0]


#: the entries of a ``.pt`` feature file: the fields of :class:`FeatureSet`
FILE_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FeatureSet))


def save_features(fs: FeatureSet, path: str) -> str:
    """Write ``fs`` to ``path`` (atomically; the entries :data:`FILE_KEYS`); returns the
    path."""
    state = {"features": fs.features.float().cpu().contiguous(), "pids": list(fs.pids),
             "camids": list(fs.camids), "cam_labels": list(fs.cam_labels),
             "paths": [list(p) for p in fs.paths], "info": dict(fs.info)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


# ----------------------------------------------------------------------------- extraction

def folder_samples(folder: str, modality_dirs: Sequence[str],
                   modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Path tuples of ``folder/<modality_dir>/<name>`` matched by file name (every name must
    exist in every modality folder)."""
    from ..data.multimodal import scan_modality_folders

    if not osp.isdir(folder):
        raise FeatureFileNotFoundError(f"folder not found: '{folder}'")
    samples = scan_modality_folders(folder, list(modality_dirs), list(modalities))
    if not samples:
        raise FeatureFileError(f"no image in '{folder}/{modality_dirs[0]}/' (expected one folder "
                               f"per modality {tuple(modality_dirs)} holding images of the same "
                               "names)")
    return samples


def extract_samples(extractor: Any, paths: list[tuple[str, ...]], pids: Sequence[int] = (),
                    camids: Sequence[int] = (), cam_labels: Sequence[int] = (),
                    info: dict[str, Any] | None = None) -> FeatureSet:
    """Features of ``paths`` through ``extractor`` (camera labels reach SIE models when
    given); unknown ids are ``-1``."""
    n = len(paths)
    cams = list(cam_labels) if cam_labels else None
    feats = extractor(list(paths), cam_ids=cams) if n else torch.zeros(0, 0)
    info = dict(info or {})
    mods = tuple(getattr(extractor, "modalities", ()))
    absent = [[mods[i] if i < len(mods) else str(i) for i, p in enumerate(s) if p is None]
              for s in paths]
    if any(absent):  # the marks a search reads (provenance.check_missing)
        info[MISSING_KEY] = absent
    return FeatureSet(feats, list(pids) or [-1] * n, list(camids) or [-1] * n,
                      cams or [-1] * n, list(paths), info)
