"""Writing feature stores (:mod:`.store`): chunk by chunk, atomically, and appending shards.

:class:`StoreWriter` writes into a temporary folder beside the target and renames it into place
when complete, so an error leaves no partial store (files and folder honour the umask).
:func:`append` adds a shard to an existing store: its files are written under temporary names,
renamed to their final (still unlisted) names, and then the ``store.json`` that lists them
replaces the old one in one atomic rename. :func:`extract_to_store` runs a feature extractor
over a split chunk by chunk, with a progress bar when stderr is a terminal.
"""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from .store import (
    DTYPES,
    META,
    STORE_FORMAT,
    STORE_VERSION,
    FeatureStore,
    StoreError,
    is_store,
    part_files,
)

__all__ = ["StoreWriter", "append", "write_store", "extract_to_store", "move_into_place", "umask"]


def umask() -> int:
    """The process umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _encode_paths(paths: Sequence[Sequence[str]], modalities: int, where: str) -> np.ndarray:
    rows = [[str(p).encode("utf-8") for p in sample] for sample in paths]
    bad = next((i for i, r in enumerate(rows) if len(r) != modalities), None)
    if bad is not None:
        raise StoreError(f"{where}: sample {bad} has {len(rows[bad])} path(s); expected "
                         f"{modalities} (one per modality)")
    width = max((len(p) for r in rows for p in r), default=1)
    return np.array(rows, dtype=f"S{max(width, 1)}").reshape(len(rows), modalities)


class StoreWriter:
    """Write ``num`` samples of ``dim`` features in chunks; a context manager.

    ``with StoreWriter(path, num, dim, modalities=3) as w: w.write(feats, pids, ...)`` leaves a
    complete store at ``path`` on success and nothing (the old store, if any, untouched unless
    ``overwrite``) on error. Memory: the chunk being written plus the encoded paths.
    """

    def __init__(self, path: str, num: int, dim: int, modalities: int, *,
                 dtype: str = "float32", normalized: bool = False,
                 info: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                 overwrite: bool = False, part: str = "part-00000",
                 _into: str | None = None) -> None:
        if dtype not in DTYPES:
            raise StoreError(f"store dtype must be one of {DTYPES}, got '{dtype}'")
        if num < 0 or dim < 1 or modalities < 1:
            raise StoreError(f"store '{path}': need num >= 0, dim >= 1, modalities >= 1; got "
                             f"num={num}, dim={dim}, modalities={modalities}")
        if _into is None and osp.exists(path):
            if not overwrite:
                raise StoreError(f"'{path}' exists; remove it or pass overwrite=True")
            if not is_store(path):
                raise StoreError(f"'{path}' exists and is not a feature store: not replacing it")
        self.path, self.num, self.dim, self.modalities = path, int(num), int(dim), int(modalities)
        self.dtype, self.part, self._into = dtype, part, _into
        self.meta: dict[str, Any] = {
            "format": STORE_FORMAT, "version": STORE_VERSION, "num": self.num, "dim": self.dim,
            "dtype": dtype, "normalized": bool(normalized), "modalities": self.modalities,
            "info": {k: v for k, v in (info or {}).items() if k != "provenance"},
            "provenance": dict(provenance or (info or {}).get("provenance") or {}) or None,
            "shards": [{"name": part, "num": self.num}]}
        self.written = 0
        self._paths: list[np.ndarray] = []
        self._tmp = ""

    def __enter__(self) -> StoreWriter:
        if self._into is None:
            parent = osp.dirname(osp.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            self._tmp = tempfile.mkdtemp(prefix=f".{osp.basename(self.path)}.", suffix=".partial",
                                         dir=parent)
            os.chmod(self._tmp, 0o777 & ~umask())  # mkdtemp makes it 0700
            folder, prefix = self._tmp, ""
        else:  # a new shard of an existing store, under temporary names
            folder, prefix = self._into, f".{self.part}.partial."
        self._files = {k: osp.join(folder, prefix + v) for k, v in part_files(self.part).items()}
        fmt = np.lib.format
        self._feats = fmt.open_memmap(self._files["features"], mode="w+", dtype=self.dtype,
                                      shape=(self.num, self.dim))
        self._ids = fmt.open_memmap(self._files["ids"], mode="w+", dtype=np.int64,
                                    shape=(self.num, 3))
        return self

    def write(self, features: Any, pids: Sequence[int] | None = None,
              camids: Sequence[int] | None = None, cam_labels: Sequence[int] | None = None,
              paths: Sequence[Sequence[str]] | None = None) -> None:
        """Append a chunk: ``features (n, D)`` (array or tensor) and per-sample ids/paths
        (``None``: ``-1`` ids, empty paths)."""
        feats = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features)
        n = feats.shape[0] if feats.ndim == 2 else -1
        if n < 0 or feats.shape[1] != self.dim:
            raise StoreError(f"store '{self.path}': chunk of shape {tuple(feats.shape)}; "
                             f"expected (n, {self.dim})")
        if self.written + n > self.num:
            raise StoreError(f"store '{self.path}': {self.written + n} samples written; the "
                             f"store was opened for {self.num}")
        cols = []
        for name, col in (("pids", pids), ("camids", camids), ("cam_labels", cam_labels)):
            col = np.full(n, -1, np.int64) if col is None else np.asarray(col, np.int64)
            if col.shape != (n,):
                raise StoreError(f"store '{self.path}': {name} of shape {col.shape} for a chunk "
                                 f"of {n} features")
            cols.append(col)
        if paths is None:
            paths = [("",) * self.modalities] * n
        if len(paths) != n:
            raise StoreError(f"store '{self.path}': {len(paths)} paths for {n} features")
        end = self.written + n
        self._feats[self.written:end] = feats
        self._ids[self.written:end] = np.stack(cols, axis=1)
        self._paths.append(_encode_paths(paths, self.modalities, f"store '{self.path}'"))
        self.written = end

    def _close(self) -> None:
        if self.written != self.num:
            raise StoreError(f"store '{self.path}': {self.written} samples written; expected "
                             f"{self.num}")
        for arr in (self._feats, self._ids):
            arr.flush()
        del self._feats, self._ids
        width = max((a.dtype.itemsize for a in self._paths), default=1)
        paths = (np.concatenate([a.astype(f"S{width}") for a in self._paths]) if self._paths
                 else np.zeros((0, self.modalities), dtype="S1"))
        np.save(self._files["paths"], paths)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._close()
                if self._into is None:
                    _write_meta(self._tmp, self.meta)
                    move_into_place(self._tmp, self.path)
                    self._tmp = ""
                else:
                    for k, v in part_files(self.part).items():
                        os.replace(self._files[k], osp.join(self._into, v))
        except BaseException:
            self._cleanup()
            raise
        if exc_type is not None:
            self._cleanup()

    def _cleanup(self) -> None:
        for attr in ("_feats", "_ids"):
            if hasattr(self, attr):
                delattr(self, attr)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._into is not None:
            for name in (*self._files.values(),
                         *(osp.join(self._into, v) for v in part_files(self.part).values())):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)


def _write_meta(folder: str, meta: dict[str, Any]) -> None:
    """``store.json`` in ``folder``, replaced in one rename."""
    tmp = osp.join(folder, f".{META}.partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    os.replace(tmp, osp.join(folder, META))


def move_into_place(tmp: str, path: str) -> None:
    """Rename the folder ``tmp`` to ``path``, replacing what is there."""
    old = ""
    if osp.exists(path):
        old = tempfile.mkdtemp(prefix=f".{osp.basename(path)}.", suffix=".old",
                               dir=osp.dirname(osp.abspath(path)))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True) if osp.isdir(old) else os.remove(old)


def write_store(path: str, features: Any, pids: Sequence[int] | None = None,
                camids: Sequence[int] | None = None, cam_labels: Sequence[int] | None = None,
                paths: Sequence[Sequence[str]] | None = None, **kwargs: Any) -> FeatureStore:
    """Write in-memory features (and ids, paths) as a store in one chunk; returns it opened."""
    n, dim = int(features.shape[0]), int(features.shape[1])
    modalities = kwargs.pop("modalities", len(paths[0]) if paths else 1)
    with StoreWriter(path, n, dim, modalities, **kwargs) as writer:
        writer.write(features, pids, camids, cam_labels, paths)
    return FeatureStore(path)


class _ShardWriter(StoreWriter):
    """A :class:`StoreWriter` whose output becomes a new shard of an existing store."""

    def __init__(self, store: FeatureStore, num: int) -> None:
        self.store = store
        part = f"part-{len(store.meta['shards']):05d}"
        super().__init__(store.path, num, store.dim, store.modalities, dtype=store.dtype,
                         normalized=store.normalized, part=part, _into=store.path)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        super().__exit__(exc_type, exc, tb)
        if exc_type is None:
            meta = dict(self.store.meta, num=len(self.store) + self.num,
                        shards=[*self.store.meta["shards"], {"name": self.part, "num": self.num}])
            try:
                _write_meta(self.store.path, meta)
            except BaseException:
                self._cleanup()
                raise


def append(store: FeatureStore | str, num: int) -> StoreWriter:
    """A writer of ``num`` new samples that become a new shard of ``store`` on success::

        with append(store, len(new)) as w: w.write(new_feats, pids, camids, cams, paths)

    The store keeps its old content until the writer closes (the new ``store.json`` is one
    atomic rename); an error removes the new files. Re-open the store to see them.
    """
    return _ShardWriter(store if isinstance(store, FeatureStore) else FeatureStore(store), num)


def extract_to_store(extractor: Any, path: str, paths: Sequence[Sequence[Any]],
                     pids: Sequence[int] = (), camids: Sequence[int] = (),
                     cam_labels: Sequence[int] = (), *, chunk: int | None = None,
                     progress: bool | None = None, **kwargs: Any) -> FeatureStore:
    """Features of ``paths`` through ``extractor`` written chunk by chunk to a store.

    ``chunk`` samples go through the extractor at a time (default 8 batches); a tqdm bar
    shows the progress when ``progress`` (default: stderr is a terminal). ``provenance`` may
    be a function of the feature size (known after the first chunk). Other keyword arguments
    go to :class:`StoreWriter`.
    """
    from tqdm import tqdm

    n = len(paths)
    if n == 0:
        raise StoreError(f"nothing to extract into '{path}': no samples")
    step = int(chunk or 8 * int(getattr(extractor, "batch_size", 32)))
    provenance = kwargs.pop("provenance", None)
    show = sys.stderr.isatty() if progress is None else progress
    kwargs.setdefault("normalized", bool(getattr(extractor, "normalize", False)))
    writer = None
    try:
        with tqdm(total=n, disable=not show, unit="sample", desc="extract") as bar:
            for start in range(0, n, step):
                sl = slice(start, start + step)
                cams = list(cam_labels[sl]) if len(cam_labels) else None
                feats = extractor(list(paths[sl]), cam_ids=cams)
                if writer is None:
                    dim = int(feats.shape[1])
                    writer = StoreWriter(path, n, dim, len(paths[0]), **kwargs,
                                         provenance=provenance(dim) if callable(provenance)
                                         else provenance)
                    writer.__enter__()
                writer.write(feats, pids[sl] if len(pids) else None,
                             camids[sl] if len(camids) else None, cams,
                             [tuple(str(p) for p in s) for s in paths[sl]])
                bar.update(len(feats))
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, None)
        raise
    assert writer is not None
    writer.__exit__(None, None, None)
    return FeatureStore(path)
