"""FAISS indexes over a gallery feature store: build, open, search, add.

An index is a folder beside its store::

    index.faiss     the FAISS index (faiss.write_index)
    index.json      kind, metric, dim, num, parameters, the gallery store (relative path),
                    the store's provenance, the FAISS version and the build time

Kinds (:data:`KINDS`): ``flat`` (exact), ``ivf_flat`` (inverted lists over k-means cells, exact
distances within the ``nprobe`` cells searched), ``ivf_pq`` (the same with product-quantised
codes, ``m`` bytes per sample in memory; the top ``refine * k`` candidates are re-ranked with
the features read from the store) and ``hnsw`` (a graph over the features). The metric follows
the store: inner product for L2-normalised features (its ranking is the cosine's and the
euclidean's), L2 otherwise. The returned distances are recomputed pair by pair as
:func:`~.exact.topk_exact` does, so they equal the exact search's and ties go to the lower
gallery index. With ``faiss-gpu`` installed and a GPU present, ``flat`` and the IVF kinds run
there (``device="auto"``).

``add`` appends new samples to the gallery store (a new shard) and to the index, without
retraining; the index refuses features from another model (provenance) or of another size.
"""
from __future__ import annotations

import json
import logging
import math
import os
import os.path as osp
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import torch

from ..errors import SDTPSError
from . import provenance as prov
from .exact import METRICS, SearchError, feature_blocks, num_rows, rerank
from .store import FeatureStore, load_features
from .store_writer import append, move_into_place, umask

__all__ = ["GalleryIndex", "GalleryIndexError", "GalleryIndexNotFoundError", "MissingFaissError",
           "KINDS", "faiss_module", "gpu_available"]

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("flat", "ivf_flat", "ivf_pq", "hnsw")
INDEX_FORMAT = "torchreid_sdtps.gallery_index"
INDEX_FILE, INDEX_META = "index.faiss", "index.json"


class GalleryIndexError(SDTPSError, ValueError):
    """An index that cannot be built, read, searched or extended as asked (names the folder)."""


class GalleryIndexNotFoundError(GalleryIndexError, FileNotFoundError):
    """No index in the folder given."""


class MissingFaissError(SDTPSError, ImportError):
    """FAISS is not installed."""


def faiss_module() -> Any:
    """``import faiss``, or an error saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingFaissError("FAISS indexes need faiss: pip install 'torchreid-sdtps[index]' "
                                "(faiss-cpu), or faiss-gpu for CUDA") from exc
    return faiss


def gpu_available() -> bool:
    """Whether the installed FAISS has GPU support and sees a GPU."""
    faiss = faiss_module()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _use_gpu(kind: str, device: str) -> bool:
    """Whether to run ``kind`` on the GPU for ``device`` (auto / cpu / gpu)."""
    if device not in ("auto", "cpu", "gpu"):
        raise GalleryIndexError(f"device must be auto, cpu or gpu, got '{device}'")
    if device == "gpu" and (kind == "hnsw" or not gpu_available()):
        raise GalleryIndexError("device 'gpu' needs faiss-gpu, a visible GPU and a flat or IVF "
                                "index (HNSW runs on the CPU)")
    return device == "gpu" or (device == "auto" and kind != "hnsw" and gpu_available())


def _auto_params(kind: str, n: int, dim: int, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters of ``kind`` for ``n`` samples; given ones win, unknown ones raise."""
    known = {"flat": set(), "ivf_flat": {"nlist", "nprobe", "train_size"},
             "ivf_pq": {"nlist", "nprobe", "train_size", "m", "nbits", "refine"},
             "hnsw": {"hnsw_m", "ef_construction", "ef_search"}}[kind]
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise GalleryIndexError(f"index kind '{kind}' has no parameter(s) {unknown}; it takes "
                          f"{sorted(known) or 'none'}")
    out: dict[str, Any] = {}
    if kind.startswith("ivf"):
        nlist = int(given.get("nlist") or max(1, min(round(math.sqrt(n)), n // 39 or 1)))
        out.update(nlist=nlist, nprobe=int(given.get("nprobe") or min(nlist, max(4, nlist // 64))),
                   train_size=int(given.get("train_size") or min(n, max(64 * nlist, 20000))))
        if nlist > n:
            raise GalleryIndexError(f"nlist={nlist} cells for {n} samples: need nlist <= samples")
    if kind == "ivf_pq":
        m = int(given.get("m") or max(d for d in range(1, max(1, dim // 16) + 1) if dim % d == 0))
        if dim % m:
            raise GalleryIndexError(f"ivf_pq: m={m} must divide the feature size {dim}")
        # k-means of 2**nbits codes per sub-vector wants >= 39 training points per code
        nbits = int(given.get("nbits") or min(8, max(1, int(math.log2(out["train_size"] / 39)))))
        out.update(m=m, nbits=nbits, refine=int(given.get("refine") or 10))
    if kind == "hnsw":
        out.update(hnsw_m=int(given.get("hnsw_m") or 16),
                   ef_construction=int(given.get("ef_construction") or 40),
                   ef_search=int(given.get("ef_search") or 128))
    return out


class GalleryIndex:
    """A FAISS index over a gallery :class:`~.store.FeatureStore` (see the module doc)."""

    def __init__(self, path: str, meta: dict[str, Any], index: Any, store: FeatureStore,
                 device: str = "auto") -> None:
        self.path, self.meta, self.index, self.store = path, meta, index, store
        self.device = device
        self._search_index: Any = None

    # ------------------------------------------------------------------ build / open / save
    @classmethod
    def build(cls, store: FeatureStore | str, path: str, kind: str = "flat", *,
              overwrite: bool = False, device: str = "auto", chunk: int = 65536,
              **params: Any) -> GalleryIndex:
        """Build a ``kind`` index over ``store`` and save it to the folder ``path``."""
        faiss = faiss_module()
        store = load_features(store) if isinstance(store, str) else store
        if not isinstance(store, FeatureStore):
            raise GalleryIndexError("an index is built over a feature store (tools/extract.py "
                                    "writes one); re-extract the .pt file's split to a store")
        if kind not in KINDS:
            raise GalleryIndexError(f"index kind must be one of {KINDS}, got '{kind}'")
        if osp.exists(path) and not overwrite:
            raise GalleryIndexError(f"'{path}' exists; remove it or pass overwrite")
        n, dim = len(store), store.dim
        if n == 0:
            raise GalleryIndexError(f"store '{store.path}' is empty")
        p = _auto_params(kind, n, dim, params)
        metric = "ip" if store.normalized else "l2"
        fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        t0 = time.perf_counter()
        if kind == "flat":
            index = faiss.IndexFlat(dim, fmetric)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, p["hnsw_m"], fmetric)
            index.hnsw.efConstruction = p["ef_construction"]
        else:
            quantizer = faiss.IndexFlat(dim, fmetric)
            index = (faiss.IndexIVFFlat(quantizer, dim, p["nlist"], fmetric) if kind == "ivf_flat"
                     else faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["m"], p["nbits"], fmetric))
            index.cp.niter = 10  # k-means iterations of the cells (and of the PQ codebooks)
            if kind == "ivf_pq":
                index.pq.cp.niter = 10
        gpu = _use_gpu(kind, device)
        work = faiss.index_cpu_to_all_gpus(index) if gpu else index
        if kind.startswith("ivf"):
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(n, size=p["train_size"], replace=False))
            work.train(store.take(sample))  # the Python index keeps its quantizer alive
        meta = {"format": INDEX_FORMAT, "version": 1, "kind": kind, "metric": metric, "dim": dim,
                "num": 0, "normalized": store.normalized, "params": p,
                "provenance": store.provenance,
                "info": {k: v for k, v in store.info.items() if k != "provenance"},
                "faiss": faiss.__version__}
        out = cls(path, meta, work, store, device)
        out._add_rows(store, chunk)
        if gpu:
            out.index = faiss.index_gpu_to_cpu(work)
        meta["build_s"] = round(time.perf_counter() - t0, 3)
        out.save(overwrite=overwrite)
        return out

    @classmethod
    def open(cls, path: str, device: str = "auto") -> GalleryIndex:
        """Read the index in folder ``path`` and map its gallery store; sizes are checked."""
        faiss = faiss_module()
        meta_file, index_file = osp.join(path, INDEX_META), osp.join(path, INDEX_FILE)
        if not osp.isfile(meta_file) or not osp.isfile(index_file):
            raise GalleryIndexNotFoundError(f"no index in '{path}' (expected {INDEX_META} and "
                                    f"{INDEX_FILE}; build one with tools/index.py build)")
        try:
            with open(meta_file, encoding="utf-8") as fh:
                meta = json.load(fh)
            index = faiss.read_index(index_file)
        except (OSError, ValueError, RuntimeError) as exc:
            raise GalleryIndexError(f"cannot read the index in '{path}' ({type(exc).__name__}: "
                              f"{exc})") from exc
        if meta.get("format") != INDEX_FORMAT:
            raise GalleryIndexError(f"'{meta_file}' is not an index of tools/index.py")
        store = FeatureStore(osp.normpath(osp.join(path, meta["store"])))
        if not (index.ntotal == meta["num"] == len(store)) or index.d != store.dim:
            raise GalleryIndexError(f"index '{path}' holds {index.ntotal} x {index.d} features "
                              f"({INDEX_META}: {meta['num']}) but its store '{store.path}' holds "
                              f"{len(store)} x {store.dim}; rebuild it (tools/index.py build)")
        diff = prov.differences(meta.get("provenance") or {}, store.provenance or {})
        if diff:
            raise GalleryIndexError(f"index '{path}' was built from other features than its store "
                                    f"'{store.path}' holds now ({', '.join(diff)} differ); "
                                    "rebuild it (tools/index.py build)")
        return cls(path, meta, index, store, device)

    def save(self, overwrite: bool = True) -> str:
        """Write the folder atomically (a temporary folder renamed into place)."""
        faiss = faiss_module()
        parent = osp.dirname(osp.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{osp.basename(self.path)}.", suffix=".partial",
                               dir=parent)
        try:
            os.chmod(tmp, 0o777 & ~umask())
            faiss.write_index(self.index, osp.join(tmp, INDEX_FILE))
            self.meta["num"] = int(self.index.ntotal)
            self.meta["store"] = osp.relpath(osp.abspath(self.store.path), osp.abspath(self.path))
            with open(osp.join(tmp, INDEX_META), "w", encoding="utf-8") as fh:
                json.dump(self.meta, fh, indent=1)
            if osp.exists(self.path) and not overwrite:
                raise GalleryIndexError(f"'{self.path}' exists")
            move_into_place(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.path

    # ------------------------------------------------------------------ add
    def _add_rows(self, source: Any, chunk: int) -> None:
        p = self.meta["params"]
        if self.meta["kind"] == "ivf_pq":  # PQ encoding holds chunk x m x 2**nbits floats
            chunk = min(chunk, max(256, (256 << 20) // (4 * p["m"] * 2 ** p["nbits"])))
        for _, block in feature_blocks(source, chunk):
            self.index.add(np.ascontiguousarray(block.numpy(), dtype=np.float32))
        self._search_index = None

    def add(self, new: FeatureStore | str, chunk: int = 65536, allow_mismatch: bool = False
            ) -> int:
        """Append the samples of the store ``new`` to the gallery store and the index (no
        retraining) and save both; returns the new gallery size. Features made differently
        (:mod:`.provenance`) are refused unless ``allow_mismatch``."""
        new = load_features(new) if isinstance(new, str) else new
        if not isinstance(new, FeatureStore):
            raise GalleryIndexError("add takes a feature store (tools/extract.py writes one)")
        if new.dim != self.store.dim or new.normalized != self.store.normalized:
            raise GalleryIndexError(f"store '{new.path}' holds D={new.dim} features "
                              f"(normalized={new.normalized}); the index holds D={self.store.dim}"
                              f" (normalized={self.store.normalized})")
        if new.modalities != self.store.modalities:
            raise GalleryIndexError(f"store '{new.path}' has {new.modalities} paths per sample; the "
                              f"gallery has {self.store.modalities}")
        prov.check(new.provenance, self.meta["provenance"], (f"'{new.path}'", f"index '{self.path}'"),
                   allow_mismatch)
        try:
            self._add_rows(new, chunk)
            with append(self.store, len(new)) as writer:
                for start, block in new.chunks(chunk):
                    stop = start + len(block)
                    writer.write(block, new.pids[start:stop], new.camids[start:stop],
                                 new.cam_labels[start:stop], new.paths[start:stop])
        except BaseException:  # the saved index and store are unchanged: read them back
            self.index = faiss_module().read_index(osp.join(self.path, INDEX_FILE))
            self.store = FeatureStore(self.store.path)
            self._search_index = None
            raise
        self.store = FeatureStore(self.store.path)
        self.save()
        return len(self.store)

    # ------------------------------------------------------------------ search
    def _device_index(self) -> Any:
        if self._search_index is None:
            self._search_index = (faiss_module().index_cpu_to_all_gpus(self.index)
                                  if _use_gpu(self.meta["kind"], self.device) else self.index)
        return self._search_index

    def search(self, query: Any, k: int = 10, metric: str = "euclidean", *,
               nprobe: int | None = None, ef_search: int | None = None, rows: int = 4096,
               check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances (Q, k) float64, gallery indices (Q, k))``, nearest first, as
        :func:`~.exact.topk_exact` returns them (``-1`` / ``inf`` where fewer than ``k``
        entries were found in the cells searched). Queries that carry a provenance record
        (a store or feature set) made differently from the index's are refused (``check``;
        the search command checks itself, with its ``--allow-mismatch``)."""
        if metric not in METRICS:
            raise SearchError(f"metric must be one of {METRICS}, got '{metric}'")
        if metric == "cosine" and self.meta["metric"] != "ip":
            raise SearchError(f"index '{self.path}' ranks unnormalised features by L2; cosine "
                              "needs features extracted with --normalize (or exact search)")
        if k < 1:
            raise SearchError(f"topk must be >= 1, got {k}")
        if check:
            prov.check(prov.provenance_of(query), self.meta["provenance"],
                       ("the queries", f"index '{self.path}'"))
        kind, p = self.meta["kind"], self.meta["params"]
        index = self._device_index()
        if kind.startswith("ivf"):
            index.nprobe = int(nprobe or p["nprobe"])
        elif nprobe is not None:
            raise SearchError(f"nprobe applies to IVF indexes; '{self.path}' is {kind}")
        if kind == "hnsw":
            index.hnsw.efSearch = int(ef_search or max(p["ef_search"], k))
        elif ef_search is not None:
            raise SearchError(f"ef_search applies to HNSW indexes; '{self.path}' is {kind}")
        k = min(k, len(self.store))
        # a margin beyond k: entries tied at the k-th place are all recomputed and ordered
        fetch = min(max(k * p.get("refine", 1), k + max(8, k // 4)), len(self.store))
        nq = num_rows(query)
        out_v = torch.full((nq, k), float("inf"), dtype=torch.float64)
        out_i = torch.full((nq, k), -1, dtype=torch.int64)
        for start, q in feature_blocks(query, rows):
            if q.shape[1] != self.store.dim:
                raise SearchError(f"feature sizes differ: queries D={q.shape[1]}, index "
                                  f"D={self.store.dim} (extracted with different models?)")
            qn = torch.nn.functional.normalize(q, dim=1) if self.meta["metric"] == "ip" else q
            _, cand = index.search(np.ascontiguousarray(qn.numpy()), fetch)
            v, i = rerank(q, self.store, torch.from_numpy(cand).long(), metric, k)
            out_v[start:start + len(q)], out_i[start:start + len(q)] = v, i
        return out_v, out_i

    def info(self) -> dict[str, Any]:
        """What ``tools/index.py info`` prints."""
        return {"path": self.path, "store": self.store.path, "kind": self.meta["kind"],
                "metric": self.meta["metric"], "num": int(self.index.ntotal),
                "dim": self.meta["dim"], "params": self.meta["params"],
                "provenance": self.meta["provenance"], "faiss": self.meta.get("faiss"),
                "build_s": self.meta.get("build_s"), "gpu": gpu_available()}
