"""Token heat maps: which patches SDTPS scores high and keeps, drawn over each modality's image.

One picture per sample, a column per modality: on top the image with the dropped patches
dimmed and the kept ones outlined in green; below, the patch scores (min-max per modality,
OpenCV's ``TURBO`` colour map: blue low, red high) over the grey image, with the same outlines.
When the data set has ground truth (``cue="localized"``) the cue patches get a magenta inner
outline and the caption gives the modality's recall.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import unwrap_model
from ..data.multimodal import load_modalities
from ..io import atomic_path
from ..metrics.selection import cue_mask, has_cue_truth, selection_scores

__all__ = ["KEPT_COLOUR", "CUE_COLOUR", "panel_origin", "token_map", "sample_token_map",
           "save_token_maps"]

logger = logging.getLogger(__name__)

KEPT_COLOUR = (0, 255, 0)
CUE_COLOUR = (255, 0, 255)
_GAP, _CAPTION, _FOOTER = 6, 16, 14
_DIM = 0.35      # brightness of dropped patches (top row)
_ALPHA = 0.65    # weight of the score colour over the grey image (bottom row)


def panel_origin(index: int, row: int, size: tuple[int, int], scale: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of modality ``index``'s panel in ``row`` (0: image, 1: scores) of a
    :func:`token_map` picture of ``size = (H, W)`` images."""
    h, w = size
    return _GAP + index * (w * scale + _GAP), _CAPTION + row * (h * scale + _GAP)


def token_map(images: np.ndarray, scores: np.ndarray, kept: np.ndarray, grid: tuple[int, int],
              cue: np.ndarray | None = None, labels: Sequence[str] = (), scale: int = 3,
              footer: bool = True) -> Image.Image:
    """The heat-map picture of one sample: a column per modality, two rows.

    Top row: the image, dropped patches dimmed, kept patches outlined in green
    (:data:`KEPT_COLOUR`). Bottom row: the patch scores (min-max per modality, OpenCV's TURBO
    map: blue low, red high) over the grey image, with the same outlines. Cue patches (ground
    truth, optional) get a magenta inner outline (:data:`CUE_COLOUR`) in both rows.

    Args:
        images: ``(M, H, W, 3)`` uint8, the images the model saw (its input size).
        scores: ``(M, N)`` patch scores; ``kept``: ``(M, N)`` bool; ``cue``: ``(M, N)`` bool.
        grid: patch grid ``(rows, cols)`` with ``rows * cols = N`` dividing ``H x W``.
        labels: one caption per modality. ``scale``: integer upscaling of each panel.

    Size: width ``M * (W * scale + 6) + 6``, height ``2 * H * scale + 6 + 16 + 3 (+ 14)``.
    """
    images, scores, kept = np.asarray(images), np.asarray(scores, np.float32), np.asarray(kept, bool)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"token_map: images must be (M, H, W, 3) uint8, got "
                         f"{images.shape} {images.dtype}")
    m, h, w = images.shape[:3]
    gh, gw = grid
    if scores.shape != (m, gh * gw) or kept.shape != (m, gh * gw) or (
            cue is not None and np.shape(cue) != (m, gh * gw)):
        raise ValueError(f"token_map: scores {scores.shape}, kept {kept.shape} and cue "
                         f"{None if cue is None else np.shape(cue)} must be (M, N) = ({m}, {gh * gw})")
    if h % gh or w % gw:
        raise ValueError(f"token_map: grid {grid} does not divide the image size {h}x{w}")
    ph, pw = h // gh * scale, w // gw * scale
    lo, hi = scores.min(1, keepdims=True), scores.max(1, keepdims=True)
    norm = np.where(hi > lo, (scores - lo) / np.maximum(hi - lo, 1e-12), 0.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_TURBO)
    heat = heat.reshape(m, gh, gw, 3)[..., ::-1].astype(np.float32)          # BGR -> RGB

    def cells(a: np.ndarray) -> np.ndarray:                                   # (gh, gw, ...) -> pixels
        return np.repeat(np.repeat(a, ph, 0), pw, 1)

    height = _CAPTION + 2 * h * scale + _GAP + (_FOOTER if footer else 0) + _GAP // 2
    canvas = Image.new("RGB", (m * (w * scale + _GAP) + _GAP, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(m):
        up = np.asarray(Image.fromarray(images[i]).resize((w * scale, h * scale),
                                                          Image.Resampling.NEAREST), np.float32)
        shade = cells(np.where(kept[i], 1.0, _DIM).reshape(gh, gw))[..., None]
        grey = up.mean(-1, keepdims=True)
        rows = (up * shade, (1 - _ALPHA) * grey + _ALPHA * cells(heat[i]))
        for row, pix in enumerate(rows):
            x0, y0 = panel_origin(i, row, (h, w), scale)
            canvas.paste(Image.fromarray(np.clip(pix, 0, 255).astype(np.uint8)), (x0, y0))
            for j in range(gh * gw):
                r, c = divmod(j, gw)
                left, top = x0 + c * pw, y0 + r * ph
                if kept[i, j]:
                    draw.rectangle([left + 1, top + 1, left + pw - 2, top + ph - 2],
                                   outline=KEPT_COLOUR, width=2)
                if cue is not None and cue[i, j]:
                    draw.rectangle([left + 4, top + 4, left + pw - 5, top + ph - 5],
                                   outline=CUE_COLOUR, width=2)
        if i < len(labels):
            draw.text((panel_origin(i, 0, (h, w), scale)[0], 2), labels[i], fill=(0, 0, 0),
                      font=font)
    if footer:
        legend = "top: kept (green), dropped (dim)   bottom: score, blue low to red high"
        if cue is not None:
            legend += "   magenta: cue"
        draw.text((_GAP, height - _FOOTER - _GAP // 2 + 1), legend, fill=(60, 60, 60), font=font)
    return canvas


@torch.no_grad()
def sample_token_map(model: torch.nn.Module, dataset: Any, index: int, scale: int = 3
                     ) -> tuple[Image.Image, dict[str, Any]]:
    """Run ``model.extract`` on sample ``index`` of ``dataset`` (its own transform, e.g. the
    test transform) and draw it. Returns the picture and ``{"paths", "pid", "camid", "recall",
    "precision"}`` (the last two None without ground truth)."""
    net = unwrap_model(model)
    if not hasattr(net, "extract"):
        raise TypeError(f"{type(net).__name__} has no extract(): token maps need an SDTPS model")
    item = dataset[index]
    x = item["img"]
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"sample {index}: expected a transformed image tensor (M, 3, H, W), "
                         f"got {type(x).__name__}")
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        cam = item.get("cam_label")
        out = net.extract(x[None].to(device),
                          None if cam is None else torch.as_tensor([cam]).to(device))
    finally:
        net.train(was_training)
    if out.get("masks") is None:
        raise ValueError("the model keeps no tokens (use_sdtps=False): nothing to draw")
    kept, scores = out["masks"][0].bool().cpu(), out["scores"][0].float().cpu()
    grid = tuple(net.backbone.grid_size)
    h, w = x.shape[-2:]
    paths = tuple(item["impath"])
    modalities = tuple(getattr(dataset, "modalities", ())) or tuple(str(i) for i in range(len(x)))
    # the data set's own loader: one file per modality or one side-by-side image (RGBNT100)
    images = np.stack([np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
                       for img in load_modalities(paths, modalities)])
    cue, info = None, {"paths": paths, "pid": item["pid"], "camid": item["camid"],
                       "recall": None, "precision": None}
    labels = list(modalities)
    if has_cue_truth(dataset):
        cue_t = cue_mask(dataset, [paths], kept.shape[-1])[0]
        cue = cue_t.numpy()
        sc = selection_scores(kept[None], cue_t[None])
        info.update(recall=dict(zip(modalities, sc["recall"])),
                    precision=dict(zip(modalities, sc["precision"])))
        labels = [f"{mod} recall {100 * r:.0f}%" for mod, r in zip(modalities, sc["recall"])]
    picture = token_map(images, scores.numpy(), kept.numpy(), grid, cue, labels, scale)
    return picture, info


def save_token_maps(model: torch.nn.Module, dataset: Any, indices: Sequence[int], out_dir: str,
                    scale: int = 3) -> list[str]:
    """One PNG per sample index, ``<out_dir>/tokens_<index>_pid<pid>_cam<camid>.png`` (each
    written atomically); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index in indices:
        if not 0 <= index < len(dataset):
            raise IndexError(f"sample index {index} out of range for {len(dataset)} samples")
        picture, info = sample_token_map(model, dataset, index, scale)
        path = osp.join(out_dir, f"tokens_{index:05d}_pid{info['pid']}_cam{info['camid']}.png")
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        written.append(path)
    logger.info("wrote %d token map(s) to %s", len(written), out_dir)
    return written
