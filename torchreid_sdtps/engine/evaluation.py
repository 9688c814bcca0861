"""Ranking: the one path extract -> rank -> summarize, shared by every caller.

``ImageSDTPSEngine._evaluate`` (torchreid's ``test()``), ``ImageSDTPSEngine.evaluate_missing``
and :func:`rank_targets` (torchreid's stock engines, which only print their metrics) all rank
through :func:`rank_split`. The functions take any torchreid engine and use its own hooks
(``parse_data_for_eval`` / ``extract_features``) and torchreid's metrics. A result holds
``mAP``, ``R<r>`` (fractions), the full ``cmc`` curve and the split sizes;
:func:`results_summary` is the one place that turns results into their JSON summary (no
``cmc``). The missing-modality settings (:func:`parse_setting`) and the plain-text table
(:func:`format_table`) live here too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import compat
from ..choices import MISSING_SETTINGS
from ..errors import ConfigError
from .ddp import gather_shards, shard_loader
from .state import rng_fork

__all__ = [
    "DEFAULT_MISSING_SETTINGS", "REPORTED_RANKS", "Ranking", "parse_setting", "format_table",
    "metric_row", "extract_split", "rank_features", "summarize", "rank_split", "evaluating",
    "rank_targets", "results_summary",
]

#: the missing-modality settings of DeMo's table ("none" = all modalities present)
DEFAULT_MISSING_SETTINGS: tuple[str, ...] = MISSING_SETTINGS
#: ranks every result reports, whatever else is asked for
REPORTED_RANKS: tuple[int, ...] = (1, 5, 10)


# ----------------------------------------------------------------------------- settings, tables

def parse_setting(setting: str, modalities: Sequence[str]) -> tuple[int, ...]:
    """Indices of the modalities ``setting`` zeroes: "none" -> (), "RGB+NI" -> (0, 1)."""
    if setting.strip().lower() in ("none", "", "all"):
        return ()
    lower = [m.lower() for m in modalities]
    out = []
    for part in setting.split("+"):
        name = part.strip().lower()
        if name not in lower:
            raise ConfigError(f"missing-modality setting '{setting}': unknown modality "
                              f"'{part.strip()}'; the data set has {tuple(modalities)}")
        out.append(lower.index(name))
    if len(set(out)) == len(modalities):
        raise ConfigError(f"missing-modality setting '{setting}' zeroes every modality "
                          f"{tuple(modalities)}; at least one must remain")
    return tuple(sorted(set(out)))


def metric_row(result: dict[str, Any]) -> dict[str, float]:
    """The table columns of a result: ``mAP`` then the ``R<r>`` entries, in their order."""
    return {k: v for k, v in result.items() if k == "mAP" or (k[:1] == "R" and k[1:].isdigit())}


def format_table(rows: dict[str, dict[str, Any]], title: str = "",
                 first: str = "setting") -> str:
    """A plain-text table: one row per key, columns mAP then the rank columns, in %."""
    cols = ["mAP"] + [k for k in metric_row(next(iter(rows.values()))) if k != "mAP"]
    width = max([len(first)] + [len(k) for k in rows]) + 2
    lines = [title] if title else []
    lines.append(f"{first:<{width}}" + "".join(f"{c:>8}" for c in cols))
    lines.append("-" * (width + 8 * len(cols)))
    for name, res in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{100 * res[c]:>7.1f}%" for c in cols))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ranking

class Ranking(NamedTuple):
    """One ranked query/gallery pair: the result dict, the distance matrix, the feature size."""

    result: dict[str, Any]
    distmat: np.ndarray
    feat_dim: int


@torch.no_grad()
def extract_split(engine: Any, loader: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features, pids and protocol camids of one split through ``engine``'s own hooks; under
    DDP each rank extracts its contiguous share and the shares are gathered in order."""
    dataset = loader.dataset
    loader = shard_loader(loader)
    feats, pids, camids = [], [], []
    for data in loader:
        imgs, pid, camid = engine.parse_data_for_eval(data)
        if engine.use_gpu:
            imgs = imgs.cuda()
        feats.append(engine.extract_features(imgs).cpu())
        pids.extend(torch.as_tensor(pid).tolist())
        camids.extend(torch.as_tensor(camid).tolist())
    feats, pids, camids = gather_shards(feats, pids, camids)
    if not feats:
        raise ValueError(f"evaluation split of {type(dataset).__name__} is empty")
    return torch.cat(feats), np.asarray(pids), np.asarray(camids)


def rank_features(q: tuple, g: tuple, dist_metric: str, normalize_feature: bool, rerank: bool,
                  use_metric_cuhk03: bool = False) -> tuple[np.ndarray, float, np.ndarray]:
    """CMC, mAP and distance matrix with torchreid's metrics and ``evaluate_rank``."""
    metrics = compat.metrics()
    qf, gf = q[0], g[0]
    if normalize_feature:
        qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
    distmat = metrics.compute_distance_matrix(qf, gf, dist_metric).numpy()
    if rerank:
        distmat = compat.utils().re_ranking(
            distmat, metrics.compute_distance_matrix(qf, qf, dist_metric).numpy(),
            metrics.compute_distance_matrix(gf, gf, dist_metric).numpy())
    cmc, mAP = metrics.evaluate_rank(distmat, q[1], g[1], q[2], g[2],
                                     use_metric_cuhk03=use_metric_cuhk03)
    return np.asarray(cmc), float(mAP), distmat


def summarize(cmc: np.ndarray, mAP: float, ranks: Sequence[int]) -> dict[str, Any]:
    """``{"mAP", "R<r>"..., "cmc"}`` from a CMC curve."""
    res: dict[str, Any] = {"mAP": float(mAP)}
    for r in ranks:
        res[f"R{r}"] = float(cmc[min(r, len(cmc)) - 1])
    res["cmc"] = [float(c) for c in cmc]
    return res


@torch.no_grad()
def rank_split(engine: Any, query_loader: Any, gallery_loader: Any,
               dist_metric: str = "euclidean", normalize_feature: bool = False,
               rerank: bool = False, ranks: Sequence[int] = REPORTED_RANKS,
               use_metric_cuhk03: bool = False) -> Ranking:
    """Extract query and gallery with ``engine``, rank them, summarize: the one ranking path.

    The result has ``mAP``, ``R<r>`` for ``ranks`` and :data:`REPORTED_RANKS`, ``cmc``,
    ``num_query`` and ``num_gallery``.
    """
    q = extract_split(engine, query_loader)
    g = extract_split(engine, gallery_loader)
    cmc, mAP, distmat = rank_features(q, g, dist_metric, normalize_feature, rerank,
                                      use_metric_cuhk03)
    res = summarize(cmc, mAP, sorted(set(ranks) | set(REPORTED_RANKS)))
    res.update(num_query=len(q[1]), num_gallery=len(g[1]))
    return Ranking(res, distmat, int(q[0].shape[1]))


@contextlib.contextmanager
def evaluating(engine: Any) -> Iterator[None]:
    """The engine's models in eval mode, and the global RNG streams as they were afterwards."""
    engine.set_model_mode("eval")
    with rng_fork():
        yield


def rank_targets(engine: Any, dist_metric: str = "euclidean", normalize_feature: bool = False,
                 rerank: bool = False,
                 ranks: Sequence[int] = REPORTED_RANKS) -> dict[str, dict[str, Any]]:
    """Rank every test target of any torchreid engine: ``{target: {"mAP", "R1", ...}}``.

    torchreid's own ``test()`` only prints mAP and the CMC; this returns them, in eval mode
    and without consuming random numbers.
    """
    with evaluating(engine):
        return {name: rank_split(engine, loaders["query"], loaders["gallery"], dist_metric,
                                 normalize_feature, rerank, ranks).result
                for name, loaders in engine.test_loader.items()}


def results_summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{target: result}`` without the ``cmc`` curves: what checkpoints, ``results.json`` and
    the printed tables keep."""
    return {name: {k: v for k, v in res.items() if k != "cmc"} for name, res in results.items()}
