"""A feature store on disk that maps: features of a split in memory-mappable ``.npy`` shards.

A store is a folder::

    store.json                  format, num, dim, dtype, normalized, modalities, info,
                                provenance, and the list of shards in order
    part-00000.features.npy     (n, D) float32 / float16  (np.load(mmap_mode="r"))
    part-00000.ids.npy          (n, 3) int64: pid, camid, cam_label (-1 = unknown)
    part-00000.paths.npy        (n, M) UTF-8 bytes, one path per modality

Writing (chunk by chunk, atomic, appending shards) lives in :mod:`.store_writer`. Loading maps
the shards; memory for one chunk suffices to scan a store (:meth:`FeatureStore.chunks`).

:func:`load_features` is the one reader of features on disk: a store, or a ``.pt`` feature
file (:func:`~torchreid_sdtps.deploy.features.save_features`).
"""
from __future__ import annotations

import json
import os.path as osp
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .features import FILE_KEYS, FeatureFileError, FeatureFileNotFoundError, FeatureSet

__all__ = ["FeatureStore", "StoreError", "load_features", "is_store", "part_files", "STORE_FORMAT",
           "STORE_VERSION", "META", "DTYPES"]

STORE_FORMAT = "torchreid_sdtps.feature_store"
STORE_VERSION = 1
META = "store.json"
DTYPES = ("float32", "float16")


class StoreError(FeatureFileError):
    """A feature store that cannot be read or written as asked (names the file)."""


def part_files(name: str) -> dict[str, str]:
    """The file names of shard ``name``: features, ids, paths."""
    return {k: f"{name}.{k}.npy" for k in ("features", "ids", "paths")}


def is_store(path: str) -> bool:
    """Whether ``path`` is a store folder (or its ``store.json``)."""
    return osp.isfile(path if path.endswith(META) else osp.join(path, META))


class FeatureStore:
    """A store opened for reading: shards mapped, nothing read until asked.

    ``len(store)``, ``store.dim``, ``store.normalized``, ``store.info``, ``store.provenance``
    (the record of :mod:`.provenance`, also ``store.info["provenance"]``);
    ``store.pids`` / ``camids`` / ``cam_labels`` (int64 arrays), ``store.paths[i]`` (a tuple
    of M strings); features through :meth:`rows`, :meth:`take` and :meth:`chunks` (float32).
    """

    def __init__(self, path: str) -> None:
        folder = osp.dirname(path) if path.endswith(META) else path
        meta_file = osp.join(folder, META)
        if not osp.isfile(meta_file):
            raise FeatureFileNotFoundError(f"feature store not found: '{folder}' (no {META})")
        try:
            with open(meta_file, encoding="utf-8") as fh:
                meta = json.load(fh)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read '{meta_file}' ({type(exc).__name__}: {exc})") from exc
        missing = [k for k in ("format", "num", "dim", "dtype", "modalities", "shards")
                   if not isinstance(meta, dict) or k not in meta]
        if missing or meta.get("format") != STORE_FORMAT:
            raise StoreError(f"'{meta_file}' is not a feature store of tools/extract.py "
                             f"(format {meta.get('format') if isinstance(meta, dict) else None!r},"
                             f" missing keys {missing})")
        if meta.get("version", 0) > STORE_VERSION:
            raise StoreError(f"'{meta_file}' has store version {meta['version']}; this release "
                             f"reads up to {STORE_VERSION}")
        self.path, self.meta = folder, meta
        self.dim, self.dtype = int(meta["dim"]), str(meta["dtype"])
        self.modalities = int(meta["modalities"])
        self.normalized = bool(meta.get("normalized", False))
        #: how the features were made (:mod:`.provenance`; None: not recorded)
        self.provenance: dict[str, Any] | None = meta.get("provenance") or None
        #: what tools/extract.py recorded (data set, split...), with the provenance, as the
        #: ``info`` of a ``.pt`` feature set
        self.info: dict[str, Any] = dict(meta.get("info", {}))
        if self.provenance is not None:
            self.info["provenance"] = self.provenance
        self._feats, ids, paths = [], [], []
        for shard in meta["shards"]:
            files = {k: osp.join(folder, v) for k, v in part_files(shard["name"]).items()}
            arrays = {}
            for key, file in files.items():
                try:
                    arrays[key] = np.load(file, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise StoreError(f"cannot map '{file}' ({type(exc).__name__}: {exc})") from exc
            n = int(shard["num"])
            expected = {"features": (n, self.dim), "ids": (n, 3), "paths": (n, self.modalities)}
            for key, shape in expected.items():
                if arrays[key].shape != shape:
                    raise StoreError(f"'{files[key]}' holds an array of shape "
                                     f"{arrays[key].shape}; {META} says {shape}")
            if arrays["features"].dtype != np.dtype(self.dtype):
                raise StoreError(f"'{files['features']}' is {arrays['features'].dtype}; "
                                 f"{META} says {self.dtype}")
            self._feats.append(arrays["features"])
            ids.append(arrays["ids"])
            paths.append(arrays["paths"])
        self._offsets = np.cumsum([0] + [len(f) for f in self._feats])
        if int(self._offsets[-1]) != int(meta["num"]):
            raise StoreError(f"'{meta_file}': the shards hold {int(self._offsets[-1])} samples; "
                             f"num says {meta['num']}")
        self._ids = ids[0] if len(ids) == 1 else np.concatenate(ids)
        self._paths = paths

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (f"FeatureStore('{self.path}', num={len(self)}, dim={self.dim}, "
                f"dtype={self.dtype}, normalized={self.normalized})")

    @property
    def pids(self) -> np.ndarray:
        return self._ids[:, 0]

    @property
    def camids(self) -> np.ndarray:
        return self._ids[:, 1]

    @property
    def cam_labels(self) -> np.ndarray:
        return self._ids[:, 2]

    @property
    def paths(self) -> _Paths:
        return _Paths(self._paths, self._offsets)

    @property
    def shards(self) -> list[np.ndarray]:
        """The mapped ``(n, D)`` feature arrays, one per shard, in order."""
        return list(self._feats)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Features ``start:stop`` as a float32 array (copied from the maps)."""
        stop = min(stop, len(self))
        out = np.empty((max(stop - start, 0), self.dim), np.float32)
        for s, feats in enumerate(self._feats):
            lo, hi = max(start, self._offsets[s]), min(stop, self._offsets[s + 1])
            if lo < hi:
                out[lo - start:hi - start] = feats[lo - self._offsets[s]:hi - self._offsets[s]]
        return out

    def take(self, index: Any) -> np.ndarray:
        """Features of the rows ``index`` (any order) as a float32 array."""
        index = np.asarray(index, np.int64)
        out = np.empty((len(index), self.dim), np.float32)
        shard = np.searchsorted(self._offsets, index, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._feats[s][index[sel] - self._offsets[s]]
        return out

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, float32 features)`` blocks of at most ``rows`` rows, in order.

        Read with plain file reads (not through the maps), so scanning the store keeps one
        block in the process's memory, whatever its size.
        """
        rows = max(int(rows), 1)
        for s, feats in enumerate(self._feats):
            n, base = len(feats), int(self._offsets[s])
            with open(feats.filename, "rb") as fh:
                for start in range(0, n, rows):
                    count = min(rows, n - start)
                    fh.seek(feats.offset + start * self.dim * feats.itemsize)
                    block = np.fromfile(fh, dtype=feats.dtype, count=count * self.dim)
                    if block.size != count * self.dim:
                        raise StoreError(f"'{feats.filename}' is truncated: {block.size} "
                                         f"values at row {start}; expected {count * self.dim}")
                    yield base + start, block.reshape(count, self.dim).astype(np.float32,
                                                                              copy=False)


class _Paths(Sequence):
    """The path tuples of a store, decoded on access."""

    def __init__(self, arrays: list[np.ndarray], offsets: np.ndarray) -> None:
        self._arrays, self._offsets = arrays, offsets

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return tuple(p.decode("utf-8") for p in self._arrays[s][i - self._offsets[s]])


def load_features(path: str) -> FeatureStore | FeatureSet:
    """Features on disk: a store (folder or its ``store.json``) as :class:`FeatureStore`
    (mapped), a ``.pt`` feature file as :class:`~torchreid_sdtps.deploy.features.FeatureSet`
    (read whole). Errors name the file and what was expected."""
    if is_store(path):
        return FeatureStore(path)
    if osp.isdir(path):
        raise StoreError(f"'{path}' is a folder without {META}: not a feature store")
    if not osp.isfile(path):
        raise FeatureFileNotFoundError(f"feature file not found: '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatureFileError(f"cannot read feature file '{path}' ({type(exc).__name__}: "
                               f"{exc})") from exc
    missing = [k for k in FILE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise FeatureFileError(f"'{path}' is not a feature file of tools/extract.py: missing "
                               f"keys {missing}")
    return FeatureSet(state["features"], state["pids"], state["camids"], state["cam_labels"],
                      [tuple(p) for p in state["paths"]], state["info"])
