"""An independent mAP / rank-1 for ranking tests (NumPy, written out; no torchreid code)."""
from __future__ import annotations

import numpy as np

__all__ = ["reference_map"]


def reference_map(qf, gf, q_pids, g_pids, q_cams, g_cams, normalize: bool) -> tuple[float, float]:
    """mAP and rank-1 written out: squared euclidean distances, gallery entries of the same id
    and camera dropped (market1501 protocol), AP = mean precision at each true match."""
    qf, gf = np.asarray(qf, np.float64), np.asarray(gf, np.float64)
    if normalize:
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    aps, r1 = [], []
    for i in range(len(qf)):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        order = np.argsort(dist[i][keep], kind="stable")
        match = (g_pids[keep][order] == q_pids[i]).astype(float)
        if not match.any():
            continue
        hits = np.cumsum(match)
        aps.append(float((hits / np.arange(1, len(match) + 1))[match == 1].mean()))
        r1.append(match[0])
    return float(np.mean(aps)), float(np.mean(r1))
