"""Multi-modal rank lists: torchreid's ``visrank`` pictures with every modality of a sample.

One picture per query, ``<save_dir>/<first path's name>.jpg``: the query's modality images
(RGB / NI / TI, one above the other) on the left, then its top-k gallery samples, each framed
green (same identity) or red (other identity). Gallery samples are skipped exactly as
torchreid's ``evaluate_rank`` and ``visualize_ranked_results`` skip them: same pid *and* same
camid. The plugin's data sets put the protocol in ``camid``, so this is "same camera" for
RGBNT201 / RGBNT100 and "same scene" for MSVR310 (its query/gallery camid is the scene).

:func:`visualize_ranked_results` has torchreid's signature; a dispatcher is bound in
torchreid's engine module (:func:`install`, through :func:`torchreid_sdtps.patches.patch_visrank`),
so the stock engines' ``test(visrank=True)`` draw these for multi-modal data and torchreid's
original pictures for single-image data.
"""
from __future__ import annotations

import logging
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .. import patches
from ..choices import MODALITIES
from ..data.multimodal import load_modalities
from ..io import atomic_path

__all__ = ["visualize_ranked_results", "ranked_gallery", "is_multimodal", "install", "MODALITIES"]

logger = logging.getLogger(__name__)

GREEN, RED, BLACK, WHITE = (0, 200, 0), (220, 0, 0), (0, 0, 0), (255, 255, 255)
BORDER = 4       # frame width (px)
SPACING = 6      # between gallery columns
QUERY_GAP = 30   # between the query and rank 1
LABEL_W = 28     # left column with the modality names
HEADER_H = 14    # top row with "query", "1", "2", ...


def is_multimodal(dataset: Any) -> bool:
    """Whether ``dataset`` = ``(query, gallery)`` holds samples with a tuple of paths."""
    query = dataset[0]
    return len(query) > 0 and isinstance(query[0][0], (tuple, list))


def ranked_gallery(order: np.ndarray, qpid: int, qcamid: int, gallery: Sequence, topk: int
                   ) -> list[tuple[int, bool]]:
    """``[(gallery index, matched)]`` of the first ``topk`` gallery samples in ``order`` that
    the protocol keeps (it drops same pid *and* same camid, like ``evaluate_rank``)."""
    out: list[tuple[int, bool]] = []
    for g_idx in order:
        gpid, gcamid = gallery[g_idx][1], gallery[g_idx][2]
        if gpid == qpid and gcamid == qcamid:
            continue
        out.append((int(g_idx), gpid == qpid))
        if len(out) == topk:
            break
    return out


def _tile(paths: Sequence[str], modalities: Sequence[str], width: int, height: int,
          color: tuple[int, int, int]) -> np.ndarray:
    """The sample's modality images, each resized to ``width x height`` and framed in
    ``color``, stacked vertically: ``(M * height, width, 3)`` uint8."""
    rows = []
    for img in load_modalities(paths, modalities):
        arr = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR)).copy()
        arr[:BORDER], arr[-BORDER:], arr[:, :BORDER], arr[:, -BORDER:] = color, color, color, color
        rows.append(arr)
    return np.concatenate(rows, axis=0)


def visualize_ranked_results(distmat: np.ndarray, dataset: tuple, data_type: str = "image",
                             width: int = 128, height: int = 256, save_dir: str = "",
                             topk: int = 10, modalities: Sequence[str] = MODALITIES) -> list[str]:
    """Draw the top-``topk`` rank list of every query (torchreid's signature, plus
    ``modalities``, the names of the M images of a sample). Returns the written paths.

    Args:
        distmat: ``(num_query, num_gallery)`` distances.
        dataset: ``(query, gallery)`` lists of ``(paths, pid, camid, ...)``; ``paths`` holds one
            path per modality or one side-by-side image (split into M parts).
        data_type: must be ``"image"``.
        width, height: size of each modality image in the picture.
        save_dir: output folder (created).
        topk: gallery samples per query.
    """
    if data_type != "image":
        raise ValueError(f"multi-modal rank lists support data_type 'image' only; "
                         f"got {data_type!r}")
    query, gallery = dataset
    distmat = np.asarray(distmat)
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat has shape {distmat.shape}; expected (num_query, num_gallery) = "
                         f"({len(query)}, {len(gallery)})")
    if topk < 1:
        raise ValueError(f"visrank_topk must be >= 1; got {topk}")
    m = len(modalities)
    grid_w = LABEL_W + width + QUERY_GAP + topk * (width + SPACING)
    grid_h = HEADER_H + m * height
    order = np.argsort(distmat, axis=1)
    written = []
    logger.info("Visualizing top-%d ranks of %d queries (%d gallery samples) in '%s'", topk,
                len(query), len(gallery), save_dir)
    for q_idx, (qpaths, qpid, qcamid) in enumerate(item[:3] for item in query):
        canvas = Image.new("RGB", (grid_w, grid_h), WHITE)
        draw = ImageDraw.Draw(canvas)
        for i, name in enumerate(modalities):
            draw.text((2, HEADER_H + i * height + height // 2 - 5), name, fill=BLACK)
        canvas.paste(Image.fromarray(_tile(qpaths, modalities, width, height, BLACK)),
                     (LABEL_W, HEADER_H))
        draw.text((LABEL_W + 2, 1), "query", fill=BLACK)
        for rank, (g_idx, matched) in enumerate(ranked_gallery(order[q_idx], qpid, qcamid,
                                                               gallery, topk), start=1):
            x = LABEL_W + width + QUERY_GAP + (rank - 1) * (width + SPACING)
            tile = _tile(gallery[g_idx][0], modalities, width, height, GREEN if matched else RED)
            canvas.paste(Image.fromarray(tile), (x, HEADER_H))
            draw.text((x + 2, 1), str(rank), fill=BLACK)
        name = osp.splitext(osp.basename(qpaths[0]))[0]
        path = osp.join(save_dir, f"{name}.jpg")
        with atomic_path(path, suffix=".jpg") as tmp:
            canvas.save(tmp, quality=90)
        written.append(path)
    logger.info("Rank lists saved to '%s'", save_dir)
    return written


def _dispatch(original: Callable) -> Callable:
    def visualize_ranked_results_dispatch(distmat: Any, dataset: Any, data_type: str,
                                          width: int = 128, height: int = 256,
                                          save_dir: str = "", topk: int = 10) -> Any:
        """Multi-modal samples (a tuple of paths): the plugin's rank lists; single images:
        torchreid's original."""
        if data_type == "image" and is_multimodal(dataset):
            return visualize_ranked_results(distmat, dataset, data_type, width=width,
                                            height=height, save_dir=save_dir, topk=topk)
        return original(distmat, dataset, data_type, width=width, height=height,
                        save_dir=save_dir, topk=topk)

    return visualize_ranked_results_dispatch


def install() -> bool:
    """Make torchreid's ``visualize_ranked_results`` draw multi-modal rank lists in every
    engine (idempotent; done on ``import torchreid_sdtps``)."""
    return patches.patch_visrank(_dispatch)
