"""Non-learned reference numbers on ``synthetic_msreid``, used by the synthetic benchmarks.

* :func:`raw_pixel_baseline`: nearest neighbour on raw downsampled pixels (a floor);
* :func:`attribute_oracle`: a perfect reader of each modality's attribute (a ceiling);
* :func:`missing_ceiling`: that ceiling with one modality missing, per data seed, averaged
  over tie-break draws (the missing-modality targets of docs/engine.md);
* :func:`rank_scores`: mAP / rank-1 / rank-5 of a distance matrix with torchreid's protocol.

    python benchmarks/synthetic_analysis.py --data-seeds 0 1 2 3 4 --draws 20   # ceiling table
"""
from __future__ import annotations

import os
import os.path as osp
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from torchreid_sdtps import compat
from torchreid_sdtps.data.synthetic import (
    MODALITIES,
    SyntheticSpec,
    expected_files,
    identity_attributes,
)
from torchreid_sdtps.data.synthetic.render import seeded_rng

__all__ = ["rank_scores", "raw_pixel_baseline", "attribute_oracle", "modality_combos",
           "missing_ceiling", "ceiling_table"]

_NAME_RE = re.compile(r"^(\d{6})_cam(\d+)_(\d{4})\.jpg$")


def _read_split(dataset_dir: str, split: str, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per modality, mean-centred L2-normalised ``size`` (H, W) thumbnails of ``split``."""
    names = sorted(n for n in os.listdir(osp.join(dataset_dir, split, MODALITIES[0]))
                   if _NAME_RE.match(n))
    if not names:
        raise FileNotFoundError(f"no '<pid:06d>_cam<c>_<k:04d>.jpg' files in "
                                f"{osp.join(dataset_dir, split, MODALITIES[0])}")
    parsed = [_NAME_RE.match(n).groups() for n in names]  # type: ignore[union-attr]
    pids = np.array([int(p) for p, _, _ in parsed])
    camids = np.array([int(c) - 1 for _, c, _ in parsed])
    feats = np.empty((len(MODALITIES), len(names), size[0] * size[1] * 3), np.float32)
    for mi, modality in enumerate(MODALITIES):
        for i, name in enumerate(names):
            with Image.open(osp.join(dataset_dir, split, modality, name)) as im:
                small = im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            feats[mi, i] = np.asarray(small, np.float32).reshape(-1) / 255.0
    feats -= feats.mean(axis=2, keepdims=True)
    feats /= np.linalg.norm(feats, axis=2, keepdims=True) + 1e-8
    return feats, pids, camids


def modality_combos() -> list[tuple[int, ...]]:
    """Every non-empty modality set as index tuples: singles, pairs, then all three."""
    m = range(len(MODALITIES))
    return [(i,) for i in m] + [(i, j) for i in m for j in m if i < j] + [tuple(m)]


def rank_scores(dist: np.ndarray, pids: np.ndarray, camids: np.ndarray) -> dict[str, float]:
    """mAP / rank-1 / rank-5 of a query = gallery distance matrix with torchreid's protocol."""
    cmc, mean_ap = compat.metrics().evaluate_rank(dist, pids, pids, camids, camids,
                                                  max_rank=min(10, dist.shape[1]), use_cython=False)
    return {"mAP": float(mean_ap), "rank1": float(cmc[0]),
            "rank5": float(cmc[min(4, len(cmc) - 1)])}


def raw_pixel_baseline(dataset_dir: str, split: str = "test", size: tuple[int, int] = (32, 16),
                       combos: Sequence[Sequence[str]] | None = None
                       ) -> dict[str, dict[str, float]]:
    """Non-learned baseline: nearest neighbour on raw downsampled pixels.

    Every image is resized to ``size`` (H, W), mean-centred and L2-normalised; a modality
    set's feature is the concatenation, the distance is squared Euclidean. Query = gallery =
    ``split`` under torchreid's protocol (same pid & camera dropped), evaluated with torchreid's
    ``evaluate_rank``. Returns ``{"RGB": {"mAP", "rank1", "rank5"}, ..., "RGB+NI+TI": ...}``.
    """
    feats, pids, camids = _read_split(dataset_dir, split, size)
    index = {name: i for i, name in enumerate(MODALITIES)}
    sets = [tuple(index[n] for n in c) for c in combos] if combos else modality_combos()
    gram = np.einsum("mid,mjd->mij", feats, feats)   # per-modality cosine
    out = {}
    for s in sets:
        dist = 2.0 * len(s) - 2.0 * gram[list(s)].sum(axis=0)
        out["+".join(MODALITIES[i] for i in s)] = rank_scores(dist, pids, camids)
    return out


def attribute_oracle(spec: SyntheticSpec, seed: int = 0) -> dict[str, dict[str, float]]:
    """Ceiling of a model that reads the attribute of a modality set *perfectly* (test split).

    Distance = number of differing attribute values, ties broken at random (seeded). Also
    reports how many test identities share each identity's attribute tuple (``ids_per_value``)
    and the fraction of test identities whose tuple is unique. Shows by construction that no
    single modality identifies everyone while the triple does.
    """
    attrs = identity_attributes(spec)[spec.num_train_ids:]
    files = expected_files(spec)["test"]
    pids = np.array([p for p, *_ in files])
    camids = np.array([c for _, c, *_ in files])
    sample_attrs = attrs[pids - spec.num_train_ids - 1]
    jitter = seeded_rng(seed, 99).random((len(files), len(files))) * 1e-3
    out = {}
    for s in modality_combos():
        a = sample_attrs[:, list(s)]
        dist = (a[:, None, :] != a[None, :, :]).sum(axis=2) + jitter
        keys = [tuple(r) for r in attrs[:, list(s)]]
        counts = np.array([keys.count(k) for k in keys])
        out["+".join(MODALITIES[i] for i in s)] = {
            **rank_scores(dist, pids, camids),
            "ids_per_value": float(counts.mean()),
            "unique_fraction": float((counts == 1).mean()),
        }
    return out


def missing_ceiling(spec: SyntheticSpec, draws: int = 20) -> dict[str, dict[str, float]]:
    """mAP (%) of a perfect reader of the two remaining attributes, per missing modality and
    on average, over ``draws`` tie-break seeds: ``blind`` ranks by the number of differing
    attributes only; ``exclusion`` also ranks a gallery image of the query's own camera last
    (torchreid's protocol removes same-identity same-camera images, so such an image is never
    a match: a ranker that exploits that gains the difference)."""
    attrs = identity_attributes(spec)[spec.num_train_ids:]
    files = expected_files(spec)["test"]
    pids = np.array([p for p, *_ in files])
    camids = np.array([c for _, c, *_ in files])
    sample_attrs = attrs[pids - spec.num_train_ids - 1]
    same_cam = (camids[:, None] == camids[None, :]).astype(float)
    out: dict[str, dict[str, float]] = {"blind": {}, "exclusion": {}}
    for missing, name in enumerate(MODALITIES):
        a = sample_attrs[:, [i for i in range(len(MODALITIES)) if i != missing]]
        base = (a[:, None, :] != a[None, :, :]).sum(axis=2).astype(float)
        for kind, dist0 in (("blind", base), ("exclusion", base + 10 * same_cam)):
            maps = [rank_scores(dist0 + seeded_rng(d, 99).random(base.shape) * 1e-3,
                                pids, camids)["mAP"] for d in range(draws)]
            out[kind][name] = 100 * float(np.mean(maps))
    for kind in out:
        out[kind]["average"] = float(np.mean([out[kind][n] for n in MODALITIES]))
    return out


def ceiling_table(data_seeds: Sequence[int], draws: int = 20) -> str:
    """Markdown table of :func:`missing_ceiling` per data seed (the demo uses seed 0)."""
    lines = ["| data seed | ceiling | " + " | ".join(f"{n} missing" for n in MODALITIES)
             + " | average |", "|---" * (len(MODALITIES) + 3) + "|"]
    for seed in data_seeds:
        res = missing_ceiling(SyntheticSpec(seed=int(seed)), draws)
        for kind in ("blind", "exclusion"):
            lines.append(f"| {seed} | {kind} | " + " | ".join(
                f"{res[kind][n]:.1f}" for n in (*MODALITIES, "average")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="per-data-seed missing-modality ceiling")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    print(ceiling_table(args.data_seeds, args.draws))
