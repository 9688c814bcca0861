"""Exact gallery search in bounded memory: chunked distances with a running top-k merge.

The distances are torchreid's (``compute_distance_matrix``): ``euclidean`` is the squared
distance ``|q|^2 + |g|^2 - 2 q.g`` and ``cosine`` is ``1 - cos``. Queries and gallery are
walked in blocks; each (query block x gallery block) distance tile is reduced to its top-k
with ``torch.topk`` and merged into the running top-k, so the memory is one tile and one block
of each side, whatever the gallery size (a :class:`~.store.FeatureStore` is read block by block
with plain file reads).

A float32 matrix product rounds differently for different tile shapes (two copies of one
gallery feature can get distances 0 and -4e-6). So each tile's float32 top ``k + margin``
only nominates candidates: those that may enter the running top-k get their distance
recomputed pair by pair in float64 (:func:`pair64`), and the merge orders by (float64
distance, gallery index). A row
with more than ``k + margin`` entries within float32 rounding of its last candidate (near-ties,
duplicates) has all of them recomputed. The result does not depend on the block
sizes: it is a stable sort of the float64 distance matrix (duplicates tie exactly, the lower
gallery index first).

:func:`rank_results` turns ``(distances, indices)`` into the per-query result dicts of
``tools/search.py`` (matches with ids and paths, a "no match" threshold).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SDTPSError

__all__ = ["METRICS", "SearchError", "topk_exact", "distances", "feature_blocks", "num_rows",
           "dim_of", "rank_results", "pair64", "rerank", "take_rows", "DEFAULT_BLOCK_BYTES"]

METRICS: tuple[str, ...] = ("euclidean", "cosine")
#: the size of one gallery block read at a time (float32 features)
DEFAULT_BLOCK_BYTES = 64 << 20
_NO_INDEX = torch.iinfo(torch.int64).max


class SearchError(SDTPSError, ValueError):
    """Queries and gallery that cannot be searched as asked (sizes, metric, k)."""


def num_rows(x: Any) -> int:
    """Number of samples of a store, a feature set, a tensor or an array."""
    return len(x) if hasattr(x, "chunks") or hasattr(x, "pids") else int(x.shape[0])


def dim_of(x: Any) -> int:
    """Feature size of a store, a feature set, a tensor or an array."""
    if hasattr(x, "dim") and isinstance(x.dim, int):
        return x.dim
    feats = x.features if hasattr(x, "features") else x
    return int(feats.shape[1]) if feats.ndim == 2 and feats.shape[0] else 0


def feature_blocks(x: Any, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, float32 tensor)`` blocks of at most ``rows`` rows of ``x``."""
    if hasattr(x, "chunks"):  # a FeatureStore: read from its maps
        for start, block in x.chunks(rows):
            yield start, torch.from_numpy(block)
        return
    feats = x.features if hasattr(x, "features") else x
    for start in range(0, int(feats.shape[0]), rows):
        block = feats[start:start + rows]
        if isinstance(block, np.ndarray):
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        yield start, block.float()


def _tile(q: torch.Tensor, q2: torch.Tensor, g: torch.Tensor, metric: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 distances of a query block (``q`` normalised for cosine, ``q2`` its squared
    norms) to a gallery block, and a per-row bound on their rounding error."""
    gn = torch.linalg.vector_norm(g, dim=1)
    if metric == "euclidean":
        d = torch.addmm(q2 + gn.pow(2).unsqueeze(0), q, g.t(), beta=1, alpha=-2)
        return d, 1e-5 * (q2 + gn.max().pow(2))
    d = torch.mm(q, g.t()).div_(gn.clamp_min(1e-12).unsqueeze(0)).neg_().add_(1)
    return d, torch.full_like(q2, 2e-5)


def distances(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """torchreid's distance matrix of two blocks (same formulas, float32)."""
    qn = F.normalize(q, dim=1) if metric == "cosine" else q
    return _tile(qn, qn.pow(2).sum(1, keepdim=True), g, metric)[0]


def pair64(q: torch.Tensor, g: torch.Tensor, metric: str, rows: int = 4096) -> torch.Tensor:
    """float64 distances of the row pairs ``(q[i], g[i])``, the same arithmetic for a pair
    wherever it comes from (``q`` float64, already normalised for cosine)."""
    out = torch.empty(len(q), dtype=torch.float64)
    for s in range(0, len(q), rows):
        gb = g[s:s + rows].double()
        if metric == "euclidean":
            out[s:s + rows] = (q[s:s + rows] - gb).pow_(2).sum(1)
        else:
            out[s:s + rows] = 1 - (q[s:s + rows] * F.normalize(gb, dim=1)).sum(1)
    return out


def _candidates(d: torch.Tensor, tol: torch.Tensor, c: int, kth: torch.Tensor,
                qd: torch.Tensor, gather: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 distances and columns of ``c`` candidates per row of the float32 distances
    ``d`` (columns in gallery order): the float32 top-``c``, recomputed in float64 where they
    may enter the running top-k (within rounding of the float64 ``kth``); in a row with more
    than ``c`` entries within rounding of its ``c``-th value (near-ties, duplicates) all of
    those are recomputed and the best ``c`` kept. ``gather(rows, cols)`` returns the features
    of those entries."""
    n = d.shape[1]
    c = min(c, n)
    v32, cols = d.topk(c, dim=1, largest=False, sorted=True)
    out = torch.full(cols.shape, float("inf"), dtype=torch.float64)
    keep = (v32.double() <= kth + tol) & torch.isfinite(v32)
    if c < n:  # rows whose c-th place is a near-tie that matters
        ambiguous = (((d <= v32[:, -1:] + tol).sum(1) > c)
                     & (v32[:, -1:].double() <= kth + tol).squeeze(1))
        for r in ambiguous.nonzero().squeeze(1).tolist():
            near = (d[r] <= v32[r, -1] + tol[r]).nonzero().squeeze(1)  # in column order
            row = pair64(qd[r].expand(len(near), -1), gather(torch.full_like(near, r), near),
                         metric)
            order = torch.sort(row, stable=True).indices[:c]
            cols[r], out[r] = near[order], row[order]
        keep &= ~ambiguous.unsqueeze(1)
    r, s = keep.nonzero(as_tuple=True)
    if len(r):
        out[r, s] = pair64(qd[r], gather(r, cols[r, s]), metric)
    return out, cols


def take_rows(gallery: Any, index: np.ndarray) -> torch.Tensor:
    """float32 features of the gallery rows ``index`` (a store reads them from its maps)."""
    if hasattr(gallery, "chunks"):  # a FeatureStore
        return torch.from_numpy(gallery.take(index))
    feats = gallery.features if hasattr(gallery, "features") else gallery
    rows = feats[torch.as_tensor(index)] if isinstance(feats, torch.Tensor) else feats[index]
    return torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows
                           ).float()


def _prepare(q: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query block for the float32 tiles (normalised for cosine), its squared norms, and
    its float64 copy for :func:`pair64`."""
    qn = F.normalize(q, dim=1) if metric == "cosine" else q
    qd = F.normalize(q.double(), dim=1) if metric == "cosine" else q.double()
    return qn, qn.pow(2).sum(1, keepdim=True), qd


def rerank(q: torch.Tensor, gallery: Any, cand: torch.Tensor, metric: str, k: int,
           rows: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of the candidate gallery rows ``cand (Q, c)`` (``-1``: none) by
    (float64 distance, gallery index); ``inf`` / ``-1`` fill rows with fewer than ``k``.

    The candidates' features are read once (a store reads them from its maps); a float32
    pass nominates ``k + margin`` per query, recomputed in float64 as :func:`topk_exact` does.
    """
    k = min(k, cand.shape[1])
    cand = torch.where(cand < 0, _NO_INDEX, cand).sort(dim=1).values  # gallery order
    found = cand != _NO_INDEX
    out_v = torch.full((len(q), k), float("inf"), dtype=torch.float64)
    out_i = torch.full((len(q), k), -1, dtype=torch.int64)
    if not found.any():
        return out_v, out_i
    uniq, inverse = torch.unique(cand[found], return_inverse=True)
    local = torch.zeros_like(cand)
    local[found] = inverse
    feats = take_rows(gallery, uniq.numpy())
    qn, q2, qd = _prepare(q, metric)
    if cand.shape[1] <= k + max(8, k // 4):  # few candidates: all in float64 at once
        r, j = found.nonzero(as_tuple=True)
        v = torch.full(cand.shape, float("inf"), dtype=torch.float64)
        v[r, j] = pair64(qd[r], feats[local[r, j]], metric)
        v, i = _merge(v, cand, k)
        return v, torch.where(i == _NO_INDEX, -1, i)
    for s in range(0, len(q), rows):
        sl = slice(s, s + rows)
        gc = feats[local[sl]]  # (b, c, D)
        dot = torch.bmm(gc, qn[sl].unsqueeze(2)).squeeze(2)
        gn = torch.linalg.vector_norm(gc, dim=2)
        if metric == "euclidean":
            d, tol = q2[sl] + gn.pow(2) - 2 * dot, 1e-5 * (q2[sl] + gn.max().pow(2))
        else:
            d, tol = 1 - dot / gn.clamp_min(1e-12), torch.full_like(q2[sl], 2e-5)
        d[~found[sl]] = float("inf")
        lsl = local[sl]
        v, cols = _candidates(d, tol, k + max(8, k // 4),
                              torch.full_like(q2[sl], float("inf"), dtype=torch.float64),
                              qd[sl], lambda r, j, lsl=lsl: feats[lsl[r, j]], metric)
        ids = cand[sl].gather(1, cols)
        v, i = _merge(torch.where(ids == _NO_INDEX, float("inf"), v), ids, k)
        out_v[sl], out_i[sl] = v, torch.where(i == _NO_INDEX, -1, i)
    return out_v, out_i


def _merge(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each row by (value, index)."""
    index, order = index.sort(dim=1)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, stable=True)
    return values[:, :k], index.gather(1, order)[:, :k]


def topk_exact(query: Any, gallery: Any, k: int = 10, metric: str = "euclidean", *,
               query_rows: int = 1024, gallery_rows: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distances (Q, k) float64, gallery indices (Q, k))`` of the ``k`` nearest gallery
    entries of every query, nearest first (ties: lower index first).

    ``query`` and ``gallery`` are feature stores, feature sets, tensors or arrays.
    ``gallery_rows`` (default: 64 MB of float32 features) and ``query_rows`` bound the
    memory: one distance tile of ``query_rows x gallery_rows``.
    """
    if metric not in METRICS:
        raise SearchError(f"metric must be one of {METRICS}, got '{metric}'")
    if k < 1:
        raise SearchError(f"topk must be >= 1, got {k}")
    nq, ng = num_rows(query), num_rows(gallery)
    if nq == 0 or ng == 0:
        raise SearchError(f"empty feature set: {nq} queries, {ng} gallery")
    dq, dg = dim_of(query), dim_of(gallery)
    if dq != dg:
        raise SearchError(f"feature sizes differ: queries D={dq}, gallery D={dg} (extracted "
                          "with different models?)")
    k = min(k, ng)
    margin = k + max(8, k // 4)  # float32 candidates per tile
    gallery_rows = int(gallery_rows or max(1, DEFAULT_BLOCK_BYTES // (4 * dg)))
    if gallery_rows < 1 or query_rows < 1:
        raise SearchError(f"block sizes must be >= 1, got query_rows={query_rows}, "
                          f"gallery_rows={gallery_rows}")
    out_v = torch.empty(nq, k, dtype=torch.float64)
    out_i = torch.empty(nq, k, dtype=torch.int64)
    for qs, q in feature_blocks(query, query_rows):
        qn, q2, qd = _prepare(q, metric)
        best_v = torch.full((len(q), k), float("inf"), dtype=torch.float64)
        best_i = torch.full((len(q), k), _NO_INDEX, dtype=torch.int64)
        for gs, g in feature_blocks(gallery, gallery_rows):
            d, tol = _tile(qn, q2, g, metric)
            v, cols = _candidates(d, tol, margin, best_v[:, -1:], qd,
                                  lambda r, j, g=g: g[j], metric)
            best_v, best_i = _merge(torch.cat([best_v, v], 1),
                                    torch.cat([best_i, cols + gs], 1), k)
        out_v[qs:qs + len(q)], out_i[qs:qs + len(q)] = best_v, best_i
    return out_v, out_i


def rank_results(query: Any, gallery: Any, values: torch.Tensor, index: torch.Tensor,
                 threshold: float | None = None) -> list[dict[str, Any]]:
    """One dict per query: ``query`` (index, paths, pid, camid), ``matches`` (rank, gallery
    index, distance, pid, camid, paths) and ``no_match`` (``threshold`` set and no gallery
    entry within it; only entries within the threshold are listed then)."""
    out = []
    gpaths, qpaths = gallery.paths, query.paths
    for qi in range(len(index)):
        matches = []
        for rank, (d, gi) in enumerate(zip(values[qi].tolist(), index[qi].tolist()), start=1):
            if gi < 0 or (threshold is not None and d > threshold):
                break
            matches.append({"rank": rank, "index": gi, "distance": d,
                            "pid": int(gallery.pids[gi]), "camid": int(gallery.camids[gi]),
                            "paths": list(gpaths[gi])})
        out.append({"query": {"index": qi, "paths": list(qpaths[qi]),
                              "pid": int(query.pids[qi]), "camid": int(query.camids[qi])},
                    "matches": matches, "no_match": threshold is not None and not matches})
    return out
