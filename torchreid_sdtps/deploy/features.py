"""Feature files and gallery search.

A feature file (``torch.save``, readable with ``weights_only=True``) holds ``features (N, D)``,
``pids``, ``camids``, ``cam_labels`` (``-1`` = unknown), ``paths`` (one tuple of M paths per
sample) and ``info``: the data set / folder and ``provenance``, how the features were made
(model, checkpoint and its content hash, normalisation, camera term, input size, feature
dimension, test feature; see :mod:`.provenance`). It is written atomically. :func:`search`
ranks queries against a gallery with torchreid's distance functions and returns the top-k with
an optional "no match" distance threshold.
"""
from __future__ import annotations

import dataclasses
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch

from .. import compat
from ..errors import ConfigError, SDTPSError, UnknownNameError
from ..io import atomic_path
from .provenance import check as check_provenance

__all__ = ["FeatureSet", "FeatureFileError", "FeatureFileNotFoundError", "provenance_of",
           "check_comparable", "synthetic_spec_of", "save_features", "load_features",
           "extract_samples", "dataset_samples", "folder_samples", "search", "format_search",
           "METRICS"]

METRICS: tuple[str, ...] = ("euclidean", "cosine")
_KEYS = ("features", "pids", "camids", "cam_labels", "paths", "info")


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


def save_features(fs: FeatureSet, path: str) -> str:
    """Write ``fs`` to ``path`` (atomically); returns the path."""
    state = {"features": fs.features.float().cpu().contiguous(), "pids": list(fs.pids),
             "camids": list(fs.camids), "cam_labels": list(fs.cam_labels),
             "paths": [list(p) for p in fs.paths], "info": dict(fs.info)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_features(path: str) -> FeatureSet:
    """Read a feature file written by :func:`save_features`; errors name the file."""
    if not osp.isfile(path):
        raise FeatureFileNotFoundError(f"feature file not found: '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatureFileError(f"cannot read feature file '{path}' ({type(exc).__name__}: {exc})") \
            from exc
    missing = [k for k in _KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise FeatureFileError(f"'{path}' is not a feature file of tools/extract.py: missing keys "
                         f"{missing}")
    return FeatureSet(state["features"], state["pids"], state["camids"], state["cam_labels"],
                      [tuple(p) for p in state["paths"]], state["info"])


# ----------------------------------------------------------------------------- extraction

def synthetic_spec_of(meta: dict[str, Any]) -> Any:
    """The synthetic spec the checkpoint was trained with (None: the package default)."""
    from .. import config
    from .extractor import train_config

    cfg = train_config(meta)
    return config.synthetic_spec(cfg) if cfg is not None else None


def dataset_samples(name: str, split: str, root: str, spec: Any = None
                    ) -> tuple[list[tuple[str, ...]], list[int], list[int], list[int]]:
    """``(paths, pids, camids, cam_labels)`` of split ``split`` of the registered data set
    ``name`` (``synthetic_msreid`` generated from ``spec``, default the package's)."""
    import torchreid_sdtps

    torchreid_sdtps.load_plugins()
    registry = compat.image_dataset_registry()
    if name not in registry:
        raise UnknownNameError(f"unknown dataset '{name}'; registered datasets: {sorted(registry)}")
    if split not in ("train", "query", "gallery"):
        raise ConfigError(f"split must be train, query or gallery, got '{split}'")
    kwargs: dict[str, Any] = {"root": root, "verbose": False}
    if spec is not None and name == "synthetic_msreid":
        kwargs["spec"] = spec
    dataset = registry[name](**kwargs)
    samples = getattr(dataset, split)
    cam = getattr(dataset, "camera_label", lambda s: int(s[2]))
    return ([tuple(s[0]) for s in samples], [int(s[1]) for s in samples],
            [int(s[2]) for s in samples], [int(cam(s)) for s in samples])


def folder_samples(folder: str, modality_dirs: Sequence[str],
                   modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Path tuples of ``folder/<modality_dir>/<name>`` matched by file name (every name must
    exist in every modality folder)."""
    from ..data.multimodal import scan_modality_folders

    if not osp.isdir(folder):
        raise FeatureFileNotFoundError(f"folder not found: '{folder}'")
    samples = scan_modality_folders(folder, list(modality_dirs), list(modalities))
    if not samples:
        raise FeatureFileError(f"no image in '{folder}/{modality_dirs[0]}/' (expected one folder per "
                         f"modality {tuple(modality_dirs)} holding images of the same names)")
    return samples


def extract_samples(extractor: Any, paths: list[tuple[str, ...]], pids: Sequence[int] = (),
                    camids: Sequence[int] = (), cam_labels: Sequence[int] = (),
                    info: dict[str, Any] | None = None) -> FeatureSet:
    """Features of ``paths`` through ``extractor`` (camera labels reach SIE models when
    given); unknown ids are ``-1``."""
    n = len(paths)
    cams = list(cam_labels) if cam_labels else None
    feats = extractor(list(paths), cam_ids=cams) if n else torch.zeros(0, 0)
    return FeatureSet(feats, list(pids) or [-1] * n, list(camids) or [-1] * n,
                      cams or [-1] * n, list(paths), dict(info or {}))


# ----------------------------------------------------------------------------- provenance

def provenance_of(fs: FeatureSet) -> dict[str, Any] | None:
    """The provenance record of ``fs`` (None for files written before it was recorded)."""
    rec = fs.info.get("provenance")
    return rec if isinstance(rec, dict) else None


def check_comparable(query: FeatureSet, gallery: FeatureSet, allow_mismatch: bool = False,
                     names: tuple[str, str] = ("query", "gallery")) -> list[str]:
    """Refuse to compare features made differently (see :mod:`.provenance`); returns the
    warnings given instead."""
    return check_provenance(provenance_of(query), provenance_of(gallery), names, allow_mismatch)


# ----------------------------------------------------------------------------- search

def search(query: FeatureSet, gallery: FeatureSet, topk: int = 10, metric: str = "euclidean",
           threshold: float | None = None) -> list[dict[str, Any]]:
    """Top-``topk`` gallery entries of every query, nearest first.

    Returns one dict per query: ``query`` (index, paths, pid, camid), ``matches`` (rank,
    gallery index, distance, pid, camid, paths) and ``no_match`` (True when ``threshold`` is
    set and no gallery entry is within it; only entries within the threshold are listed then).
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got '{metric}'")
    if topk < 1:
        raise ConfigError(f"topk must be >= 1, got {topk}")
    if len(gallery) == 0 or len(query) == 0:
        raise FeatureFileError(f"empty feature set: {len(query)} queries, {len(gallery)} gallery")
    if query.features.shape[1] != gallery.features.shape[1]:
        raise FeatureFileError(f"feature sizes differ: queries D={query.features.shape[1]}, gallery "
                         f"D={gallery.features.shape[1]} (extracted with different models?)")
    dist = compat.metrics().compute_distance_matrix(query.features.float(),
                                                    gallery.features.float(), metric)
    k = min(topk, len(gallery))
    values, index = dist.topk(k, dim=1, largest=False)
    out = []
    for qi in range(len(query)):
        matches = []
        for rank, (d, gi) in enumerate(zip(values[qi].tolist(), index[qi].tolist()), start=1):
            if threshold is not None and d > threshold:
                break
            matches.append({"rank": rank, "index": gi, "distance": d, "pid": gallery.pids[gi],
                            "camid": gallery.camids[gi], "paths": list(gallery.paths[gi])})
        out.append({"query": {"index": qi, "paths": list(query.paths[qi]),
                              "pid": query.pids[qi], "camid": query.camids[qi]},
                    "matches": matches, "no_match": threshold is not None and not matches})
    return out


def _cam(camid: int) -> str:
    """A camera id as file names write it (``cam1`` is camid 0); ``-`` when unknown."""
    return str(camid + 1) if camid >= 0 else "-"


def format_search(results: list[dict[str, Any]], metric: str = "euclidean") -> str:
    """The search results as a plain-text table (one block per query); cameras 1-based as in
    the file names (the JSON keeps torchreid's 0-based ``camid``)."""
    lines = []
    for res in results:
        q = res["query"]
        lines.append(f"query {q['index']}: {q['paths'][0]} (pid {q['pid']}, "
                     f"cam {_cam(q['camid'])})")
        if res["no_match"]:
            lines.append("  no match within the distance threshold")
            continue
        lines.append(f"  {'rank':>4}  {metric + ' dist':>14}  {'pid':>6}  {'cam':>4}  gallery")
        for m in res["matches"]:
            lines.append(f"  {m['rank']:>4}  {m['distance']:>14.4f}  {m['pid']:>6}  "
                         f"{_cam(m['camid']):>4}  {m['paths'][0]}")
    return "\n".join(lines)

