"""Rendering of one ``synthetic_msreid`` sample: attribute tables, camera parameters, shapes.

Every random draw comes from a generator the caller seeds (:func:`seeded_rng`), so a sample's
pixels depend only on its own seed, never on generation order.
"""
from __future__ import annotations

import math

import numpy as np

from .spec import MODALITIES, SyntheticSpec

__all__ = ["TAG_IDS", "TAG_CAM", "TAG_IMG", "GRAY", "seeded_rng", "camera_params", "render_sample",
           "photometry"]

# Seed-sequence tags: one independent random stream per purpose.
TAG_IDS, TAG_CAM, TAG_IMG = 1, 2, 3


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy generator seeded by the integer sequence ``keys`` (e.g. ``seed, TAG_IMG, pid...``)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


# Attribute tables. A family value v maps to (sub-attribute a, sub-attribute b) through PAIRS,
# ordered so that the first few values already differ in both sub-attributes.
PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0), (0, 2), (1, 0), (2, 1))
# upper body: red / green / blue; legs: dark / khaki / white
_UPPER = np.array([[0.78, 0.16, 0.14], [0.16, 0.60, 0.22], [0.17, 0.28, 0.80]], np.float32)
_LOWER = np.array([[0.12, 0.12, 0.15], [0.72, 0.62, 0.36], [0.88, 0.88, 0.88]], np.float32)
_SKIN = np.array([0.80, 0.60, 0.46], np.float32)
STRIPE_ANGLE = np.array([0.0, np.pi / 2, np.pi / 4], np.float32)   # vertical, horizontal, diagonal
_NI_REFLECTANCE = np.array([0.3, 0.52, 0.74], np.float32)           # mean clothing brightness in NI
_BLOB_Y = np.array([0.30, 0.44, 0.68], np.float32)                  # chest, waist, thighs (x H)
# blob shape: (sigma_x (x W), sigma_y (x H), half distance between twin blobs (x W), twin?)
_BLOB_SHAPE = np.array([[0.15, 0.07, 0.0], [0.08, 0.13, 0.0], [0.07, 0.06, 0.13]], np.float32)
_EDGE_SOFTNESS = np.array([1.0, 1.0, 2.5], np.float32)              # px; TI silhouettes are blurry
GRAY = np.array([False, True, True])                               # NI, TI are grey images


def camera_params(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Per (camera, modality): photometric shift, channel gains, geometric offset, scene colour."""
    c, m, s = spec.num_cameras, len(MODALITIES), spec.camera_shift
    r = seeded_rng(spec.seed, TAG_CAM)
    chan = np.exp(r.uniform(-0.18, 0.18, (c, m, 3)) * s)
    chan[:, GRAY] = 1.0
    scene = r.uniform(0.25, 0.6, (c, m, 3))
    scene[:, 1] = r.uniform(0.3, 0.55, (c, 1))    # NI: grey
    scene[:, 2] = r.uniform(0.08, 0.28, (c, 1))   # TI: cool
    params = {
        "contrast": np.exp(r.uniform(-0.3, 0.3, (c, m)) * s),
        "bias": r.uniform(-0.1, 0.1, (c, m)) * s,
        "gain": np.exp(r.uniform(-0.2, 0.2, (c, m)) * s),
        "chan": chan,
        "offset": r.uniform(-3.0, 3.0, (c, m, 2)) * s,      # px (x, y)
        "scale": np.exp(r.uniform(-0.06, 0.06, (c, m)) * s),
        "scene": scene,
    }
    return {k: v.astype(np.float32) for k, v in params.items()}


def _soft_box(x: np.ndarray, y: np.ndarray, cx: float, cy: float, hx: float, hy: float,
              soft: np.ndarray) -> np.ndarray:
    d = np.maximum(np.abs(x - cx) - hx, np.abs(y - cy) - hy)
    return np.clip(0.5 - d / soft, 0.0, 1.0)


def _soft_ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float,
                  soft: np.ndarray) -> np.ndarray:
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip(0.5 - (r - 1.0) * min(rx, ry) / soft, 0.0, 1.0)


def render_sample(spec: SyntheticSpec, attrs: np.ndarray, cam: dict[str, np.ndarray],
                   rng: np.random.Generator) -> np.ndarray:
    """Render one sample: ``(M, H, W, 3)`` uint8, modalities in the order RGB, NI, TI.

    Geometry is vectorised over the modalities (one shared pose plus a per-modality camera
    offset/scale); each modality then paints the same body parts with its own attribute.
    """
    h, w, m = spec.height, spec.width, len(MODALITIES)
    pj = spec.pose_jitter
    f32 = np.float32
    ys = (np.arange(h, dtype=f32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=f32) + 0.5)[None, None, :]
    soft = _EDGE_SOFTNESS[:, None, None] * (h / 128.0)

    # --- background: camera scene colour, a vertical gradient, clutter shapes (same geometry
    # in every modality, modality-specific intensities), drawn in raw pixel coordinates.
    grad = rng.uniform(-0.12, 0.12, (m, 1, 1, 1)).astype(f32) * (ys[None] / h - 0.5)
    img = np.broadcast_to(cam["scene"][:, :, None, None] + grad, (m, 3, h, w)).astype(f32)
    for _ in range(spec.clutter):
        active, is_box = rng.random(2) < (0.8, 0.5)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        hx, hy = rng.uniform(0.06, 0.35) * w, rng.uniform(0.03, 0.22) * h
        colour = np.empty((m, 3), f32)
        colour[0] = rng.uniform(0.0, 1.0, 3)
        colour[1] = rng.uniform(0.1, 0.9)
        colour[2] = rng.uniform(0.5, 0.9) if rng.random() < 0.15 else rng.uniform(0.05, 0.3)
        if not active:
            continue
        shape = _soft_box if is_box else _soft_ellipse
        mask = shape(xs, ys, cx, cy, hx, hy, soft)[:, None]          # (M,1,H,W)
        img = img * (1 - mask) + colour[:, :, None, None] * mask

    # --- pose: shared translation/scale/build + per-modality camera offset/scale; map every
    # pixel back into template coordinates (template pixels at scale 1).
    scale = math.exp(rng.uniform(-1, 1) * 0.08 * pj) * cam["scale"]    # (M,)
    shift_x = rng.uniform(-1, 1) * 0.07 * w * pj + cam["offset"][:, 0]
    shift_y = rng.uniform(-1, 1) * 0.03 * h * pj + cam["offset"][:, 1]
    build = math.exp(rng.uniform(-1, 1) * 0.07 * pj)
    stride = float(rng.uniform(-1, 1) * 0.03 * w * pj)
    tx = (xs - w / 2 - shift_x[:, None, None]) / scale[:, None, None] + w / 2   # (M,1,W)
    ty = (ys - h / 2 - shift_y[:, None, None]) / scale[:, None, None] + h / 2   # (M,H,1)
    x, y = np.broadcast_arrays(tx, ty)                                           # (M,H,W)

    torso_hx = 0.2 * w * build
    arm_dx = torso_hx + 0.06 * w
    leg_dx = 0.1 * w * build
    leg_hx = 0.085 * w * build
    legs = np.maximum.reduce([
        _soft_box(x, y, w / 2 + side * (leg_dx + stride), 0.72 * h, leg_hx, 0.2 * h, soft)
        for side in (-1, 1)])
    arms = [_soft_box(x, y, w / 2 + side * arm_dx, 0.35 * h, 0.055 * w, 0.14 * h, soft)
            for side in (-1, 1)]
    upper = np.maximum.reduce([_soft_box(x, y, w / 2, 0.36 * h, torso_hx, 0.16 * h, soft), *arms])
    head = _soft_ellipse(x, y, w / 2, 0.115 * h, 0.11 * w, 0.06 * h, soft)

    # --- per-modality paint of each part: (3, H, W)-broadcastable arrays.
    a_rgb, b_rgb = PAIRS[int(attrs[0])]
    a_ni, b_ni = PAIRS[int(attrs[1])]
    a_ti, b_ti = PAIRS[int(attrs[2])]
    # RGB: clothing colours (attribute) with small per-image colour jitter.
    upper_rgb = (_UPPER[a_rgb] * np.exp(rng.normal(0, 0.07, 3))).astype(f32)
    lower_rgb = (_LOWER[b_rgb] * np.exp(rng.normal(0, 0.07, 3))).astype(f32)
    skin = _SKIN * f32(rng.uniform(0.7, 1.1))
    # NI: clothing reflectance and stripe orientation (attribute); stripe period and phase vary
    # per image.
    period = rng.uniform(6.0, 11.0) * h / 128.0
    along = x[1] * np.cos(STRIPE_ANGLE[a_ni]) + y[1] * np.sin(STRIPE_ANGLE[a_ni])
    stripes = np.tanh(2.5 * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi)))
    cloth_ni = _NI_REFLECTANCE[b_ni] * rng.uniform(0.9, 1.1) + 0.16 * stripes
    # TI: warm body plus a hot blob (or twin blobs) of attribute position/shape.
    sx, sy, twin = _BLOB_SHAPE[b_ti]
    bx = w / 2 + rng.normal(0, 0.015) * w
    by = (_BLOB_Y[a_ti] + rng.normal(0, 0.012)) * h
    gy = np.exp(-0.5 * ((y[2] - by) / (sy * h)) ** 2)
    offsets = (-twin * w, twin * w) if twin else (0.0,)
    gx = np.maximum.reduce([np.exp(-0.5 * ((x[2] - bx - d) / (sx * w)) ** 2) for d in offsets])
    body_ti = rng.uniform(0.4, 0.5) + 0.5 * gx * gy

    paints = {
        "legs": (lower_rgb[:, None, None], cloth_ni, body_ti),
        "upper": (upper_rgb[:, None, None], cloth_ni, body_ti),
        "head": (skin[:, None, None], f32(rng.uniform(0.55, 0.7)), f32(rng.uniform(0.75, 0.85))),
    }
    for part, mask in (("legs", legs), ("upper", upper), ("head", head)):
        paint = np.stack([np.broadcast_to(p, (3, h, w)) for p in paints[part]])   # (M,3,H,W)
        img = img * (1 - mask[:, None]) + paint * mask[:, None]

    return photometry(img, spec, cam, rng)


def photometry(img: np.ndarray, spec: SyntheticSpec, cam: dict[str, np.ndarray],
               rng: np.random.Generator) -> np.ndarray:
    """Camera photometry, per-image illumination and pixel noise on ``(M, 3, H, W)`` floats in
    [0, 1]; returns ``(M, H, W, 3)`` uint8 (grey modalities stay grey)."""
    f32 = np.float32
    m, _, h, w = img.shape
    illum = np.exp(rng.normal(0, 0.06, m)).astype(f32)
    img = ((img - 0.5) * cam["contrast"][:, None, None, None] + 0.5
           + cam["bias"][:, None, None, None])
    img = img * (cam["gain"] * illum)[:, None, None, None] * cam["chan"][:, :, None, None]
    noise = rng.standard_normal((m, 3, h, w), dtype=f32)
    noise[GRAY] = noise[GRAY][:, :1]
    img = img + np.asarray(spec.noise, f32)[:, None, None, None] * noise
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
