"""Rendering of a ``cue="localized"`` sample: the identity sits in a few patches among clutter.

The image is a grid of ``patch_size`` cells (the ViT's patch grid when the model input has the
image size). In each modality, one region of ``cue_size`` cells at a random position (drawn
per image and per modality) shows the identity's attribute value for that modality inside a
thin frame; up to ``clutter`` other cells show patterns of the *same family* with random,
identity-independent values (no frame); the remaining cells show the plain scene. A pattern
is a stripe texture: value ``v`` -> (orientation ``a``, palette entry ``b``) through
:data:`~.render.PAIRS`; per cell, the stripe period, phase and brightness vary (scaled by
``pose_jitter``). Averaging the image therefore mixes the cue with clutter of the same
statistics; reading the framed cells is the way to identify. Camera photometry and noise are
those of the spread design (:func:`~.render.photometry`).

With ``spec.distractors = D`` the caller passes the attribute triples of D *other* identities
(``others``); each is painted, unframed, in as many random non-cue cells as the cue has (the
first ``D * R`` cells of the random order, the clutter cells follow). Pooling every patch then
mixes D + 1 identities in equal shares; only the frame tells the subject apart.
"""
from __future__ import annotations

import numpy as np

from .render import PAIRS, STRIPE_ANGLE, photometry
from .spec import MODALITIES, SyntheticSpec

__all__ = ["render_localized_sample", "cue_cells"]

# palette entry b per modality: RGB colour, NI reflectance, TI temperature (grey as RGB triples)
_PALETTE = np.array([
    [[0.78, 0.16, 0.14], [0.16, 0.60, 0.22], [0.17, 0.28, 0.80]],
    [[0.30] * 3, [0.52] * 3, [0.74] * 3],
    [[0.35] * 3, [0.55] * 3, [0.75] * 3],
], np.float32)                                  # (M, 3 entries, 3 channels)
_STRIPE_AMP = np.array([0.14, 0.14, 0.10], np.float32)
_FRAME = np.float32(0.97)  # frame level in every modality (white / bright / hot)


def cue_cells(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Row-major indices ``(M, rows * cols)`` of each modality's cue region in ``spec.grid``."""
    (gh, gw), (rows, cols) = spec.grid, spec.cue_size
    m = len(MODALITIES)
    r0 = rng.integers(0, gh - rows + 1, m)
    c0 = rng.integers(0, gw - cols + 1, m)
    dr, dc = np.divmod(np.arange(rows * cols), cols)
    return (r0[:, None] + dr) * gw + c0[:, None] + dc


def render_localized_sample(spec: SyntheticSpec, attrs: np.ndarray, cam: dict[str, np.ndarray],
                            rng: np.random.Generator, others: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """One sample: ``(M, H, W, 3)`` uint8 pixels and the cue cells ``(M, R)`` (row-major).

    ``others``: ``(spec.distractors, M)`` attribute values of the distractor identities.
    Vectorised over modalities and cells: every cell's value, orientation, period, phase and
    brightness are drawn as arrays, then expanded to pixels.
    """
    f32 = np.float32
    h, w, p = spec.height, spec.width, spec.patch_size
    (gh, gw), n, m = spec.grid, spec.grid[0] * spec.grid[1], len(MODALITIES)
    cue = cue_cells(spec, rng)                                        # (M, R)
    is_cue = np.zeros((m, n), bool)
    np.put_along_axis(is_cue, cue, True, axis=1)
    others = np.zeros((0, m), np.int64) if others is None else np.asarray(others)
    if others.shape != (spec.distractors, m):
        raise ValueError(f"render_localized_sample: others has shape {others.shape}; expected "
                         f"({spec.distractors}, {m}) for spec.distractors={spec.distractors}")
    # distractors, then clutter: the first D*R random non-cue cells per modality show the D
    # other identities (R cells each), the next `clutter` ones a random value
    r, d = cue.shape[1], others.shape[0]
    order = np.argsort(rng.random((m, n)) + is_cue, axis=1)          # non-cue cells first
    rank = np.where(is_cue, n, np.argsort(order, axis=1))             # cue cells: no rank
    is_distractor = rank < d * r
    is_clutter = ~is_distractor & (rank < d * r + min(spec.clutter, n - r - d * r))
    values = rng.integers(0, spec.values_per_modality, (m, n))
    if d:
        who = np.minimum(rank // r, d - 1)                             # (M, N) distractor index
        values = np.where(is_distractor, others.T[np.arange(m)[:, None], who], values)
    values = np.where(is_cue, attrs[:, None], values)
    pairs = np.asarray(PAIRS)[values]                                  # (M, N, 2): (a, b)
    pj = spec.pose_jitter
    period = rng.uniform(5.0, 5.0 + 4.0 * pj, (m, n)).astype(f32) * p / 16.0
    phase = rng.uniform(0, 2 * np.pi * min(1.0, pj), (m, n)).astype(f32)
    level = np.exp(rng.uniform(-0.1, 0.1, (m, n)) * pj).astype(f32)

    def pixels(a: np.ndarray) -> np.ndarray:                           # (M, N) -> (M, H, W)
        return np.repeat(np.repeat(a.reshape(m, gh, gw), p, axis=1), p, axis=2)

    ys, xs = np.mgrid[0:h, 0:w].astype(f32) + 0.5
    angle = STRIPE_ANGLE[pixels(pairs[..., 0])]
    along = xs * np.cos(angle) + ys * np.sin(angle)
    stripes = np.tanh(2.5 * np.sin(2 * np.pi * along / pixels(period) + pixels(phase)))
    colour = _PALETTE[np.arange(m)[:, None], pairs[..., 1]] * level[..., None]   # (M, N, 3)
    colour = np.stack([pixels(colour[..., c]) for c in range(3)], axis=1)         # (M, 3, H, W)
    pattern = colour + (_STRIPE_AMP[:, None, None] * stripes)[:, None]
    scene = np.broadcast_to(cam["scene"][:, :, None, None], (m, 3, h, w))
    painted = pixels(is_cue | is_clutter | is_distractor)[:, None]
    img = np.where(painted, pattern, scene).astype(f32)
    # the frame around each modality's cue region (identity-independent marker)
    t = max(1, round(2 * p / 16))
    (rows, cols), top, left = spec.cue_size, cue[:, 0] // gw * p, cue[:, 0] % gw * p
    y0, x0 = top[:, None, None], left[:, None, None]
    y1, x1 = y0 + rows * p, x0 + cols * p
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    border = inside & ~((ys >= y0 + t) & (ys < y1 - t) & (xs >= x0 + t) & (xs < x1 - t))
    img = np.where(border[:, None], _FRAME, img)
    return photometry(img, spec, cam, rng), cue
