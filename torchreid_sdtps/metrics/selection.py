"""Does token selection keep the informative patches? Recall and precision against ground truth.

A data set that knows where each image's identity evidence lies (``synthetic_msreid`` with
``cue="localized"``) exposes it through two members, the *cue protocol*:

* ``cue_grid``: the patch grid ``(rows, cols)`` its cue cells index (None: no ground truth);
* ``cue_patches(paths)``: the cue cells ``(M, R)`` of one sample, row-major in that grid.

For a kept-token mask ``(B, M, N)`` (``model.extract()["masks"]``) and the cue mask of the same
shape, per modality:

* recall = |kept ∩ cue| / |cue| (chance: the keep ratio K / N);
* precision = |kept ∩ cue| / |kept| (chance: the cue fraction |cue| / N).

Both are averaged over samples. :func:`evaluate_selection` runs a model over a loader and
returns them, or None when the data set or the model cannot provide them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..checkpoint import unwrap_model

__all__ = ["selection_counts", "selection_scores", "cue_mask", "has_cue_truth",
           "evaluate_selection", "format_selection"]

logger = logging.getLogger(__name__)


def selection_counts(kept: torch.Tensor, cue: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-modality sums over the batch of per-sample recall and precision.

    ``kept``, ``cue``: ``(B, M, N)`` masks (bool or 0/1; a kept mask with gradient is read by
    value). Returns ``{"recall", "precision"}`` of shape ``(M,)`` (sums over B) and ``"n"``.
    """
    if kept.shape != cue.shape or kept.dim() != 3:
        raise ValueError(f"selection masks: kept {tuple(kept.shape)} and cue {tuple(cue.shape)} "
                         "must both be (B, M, N)")
    kept, cue = kept.detach().bool(), cue.bool()
    hit = (kept & cue).sum(-1).double()                                   # (B, M)
    n_cue, n_kept = cue.sum(-1).double(), kept.sum(-1).double()
    if (n_cue == 0).any():
        raise ValueError("selection masks: a sample has no cue patch in some modality")
    return {"recall": (hit / n_cue).sum(0),
            "precision": (hit / n_kept.clamp_min(1)).sum(0),
            "n": torch.tensor(kept.shape[0])}


def selection_scores(kept: torch.Tensor, cue: torch.Tensor) -> dict[str, list[float]]:
    """Mean per-sample recall and precision per modality: ``{"recall": [M], "precision": [M]}``."""
    c = selection_counts(kept, cue)
    n = float(c["n"])
    return {"recall": (c["recall"] / n).tolist(), "precision": (c["precision"] / n).tolist()}


def has_cue_truth(dataset: Any) -> bool:
    """True when ``dataset`` follows the cue protocol and has ground truth."""
    return getattr(dataset, "cue_grid", None) is not None and callable(
        getattr(dataset, "cue_patches", None))


def cue_mask(dataset: Any, paths: Sequence[Sequence[str]], num_patches: int) -> torch.Tensor:
    """``(B, M, N)`` bool cue mask of the samples with image ``paths`` (one tuple per sample)."""
    cells = np.stack([np.asarray(dataset.cue_patches(p)) for p in paths])  # (B, M, R)
    if cells.size and (cells.min() < 0 or cells.max() >= num_patches):
        raise ValueError(f"cue cells out of range for {num_patches} patches: "
                         f"[{cells.min()}, {cells.max()}]")
    mask = torch.zeros(cells.shape[0], cells.shape[1], num_patches, dtype=torch.bool)
    mask.scatter_(2, torch.from_numpy(cells).long(), True)
    return mask


def _sample_paths(impath: Any) -> list[tuple[str, ...]]:
    """Per-sample path tuples from a collated ``impath`` (default_collate transposes tuples)."""
    if isinstance(impath, (list, tuple)) and impath and isinstance(impath[0], (list, tuple)):
        return [tuple(p) for p in zip(*impath)]
    return [(p,) if isinstance(p, str) else tuple(p) for p in impath]


@torch.no_grad()
def evaluate_selection(model: torch.nn.Module, loader: Any,
                       device: torch.device | str | None = None) -> dict[str, Any] | None:
    """Recall / precision of ``model``'s kept tokens against the cue cells of ``loader``'s data.

    Returns None (nothing to measure) when the data set has no cue ground truth or the model
    has no ``extract()`` masks (e.g. ``use_sdtps=False``). Otherwise ``{"recall": {modality:
    value}, "precision": {...}, "recall_mean", "precision_mean", "keep_ratio" (= chance recall),
    "cue_fraction" (= chance precision), "num_samples"}``. The model runs in eval mode (restored
    afterwards); its patch grid must equal the data set's cue grid.
    """
    dataset, net = loader.dataset, unwrap_model(model)
    if not has_cue_truth(dataset) or not hasattr(net, "extract"):
        return None
    grid = tuple(dataset.cue_grid)
    model_grid = getattr(getattr(net, "backbone", None), "grid_size", None)
    if model_grid is not None and tuple(model_grid) != grid:
        raise ValueError(f"selection metric: the model's patch grid {tuple(model_grid)} differs "
                         f"from the data set's cue grid {grid}; set the input size to the "
                         "generated image size")
    modalities = tuple(getattr(dataset, "modalities", ()))
    device = device if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    total: dict[str, Any] = {}
    kept_frac = cue_frac = 0.0
    try:
        for data in loader:
            cam = data.get("cam_label")
            out = net.extract(data["img"].to(device),
                              None if cam is None else torch.as_tensor(cam).to(device))
            if out.get("masks") is None:
                return None
            kept = out["masks"].cpu()
            cue = cue_mask(dataset, _sample_paths(data["impath"]), kept.shape[-1])
            counts = selection_counts(kept, cue)
            for key, value in counts.items():
                total[key] = total[key] + value if key in total else value
            kept_frac += float(kept.bool().float().mean(-1).sum(0).mean())
            cue_frac += float(cue.float().mean(-1).sum(0).mean())
    finally:
        net.train(was_training)
    if not total:
        raise ValueError(f"selection metric: the loader of {type(dataset).__name__} is empty")
    n = float(total["n"])
    names = modalities if len(modalities) == len(total["recall"]) else tuple(
        str(i) for i in range(len(total["recall"])))
    recall, precision = (total["recall"] / n).tolist(), (total["precision"] / n).tolist()
    return {"recall": dict(zip(names, recall)), "precision": dict(zip(names, precision)),
            "recall_mean": float(np.mean(recall)), "precision_mean": float(np.mean(precision)),
            "keep_ratio": kept_frac / n, "cue_fraction": cue_frac / n, "num_samples": int(n)}


def format_selection(res: dict[str, Any]) -> str:
    """One log line: recall / precision per modality with their chance levels."""
    per = "  ".join(f"{m} {100 * r:.1f}/{100 * res['precision'][m]:.1f}"
                    for m, r in res["recall"].items())
    return (f"selection recall/precision (%) {per}; mean {100 * res['recall_mean']:.1f}/"
            f"{100 * res['precision_mean']:.1f} (chance {100 * res['keep_ratio']:.1f}/"
            f"{100 * res['cue_fraction']:.1f}, {res['num_samples']} samples)")
