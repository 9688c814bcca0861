"""``synthetic_msreid``: a seeded tri-modal (RGB / NI / TI) re-identification data set.

The test bed of the project. Every identity is a triple of attribute values, one *family* per
modality, each family with few values (``values_per_modality``, default 6):

* RGB: the colours of the upper body (torso + arms) and of the legs;
* NI: the clothes' near-infrared reflectance and stripe orientation, colour-blind;
* TI: the layout/shape of a heat blob on the body (position x shape), colour- and texture-blind.

Triples are drawn without replacement, so the triple is unique per identity while one
modality's value is shared by ``num_ids / values_per_modality`` identities: a single modality
confuses several identities, the three together separate them. Per-camera photometric and
geometric shifts (different per modality), per-image pose/scale jitter, background clutter and
pixel noise make the task learnable yet not trivial (see ``docs/synthetic.md``).

The tree ``<root>/synthetic_msreid/{train,test}/{RGB,NI,TI}/<pid:06d>_cam<c>_<k:04d>.jpg``
(RGBNT201 style, cameras 1-based in the names) is generated on first use into a temporary
folder beside it and moved into place with ``os.replace``; later constructions reuse it as long
as its ``spec.json`` matches the requested :class:`SyntheticSpec` and no file is missing.
Every image is rendered from its own seed ``(seed, pid, cam, k)``, so the output is independent
of generation order.

torchreid's ``ImageDataManager`` cannot pass a spec to the dataset: set the default with
:func:`set_default_spec` or, scoped, with :func:`using_spec`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import os.path as osp
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .. import compat
from .rgbnt201 import RGBNT201

try:  # POSIX advisory lock: concurrent processes (e.g. DDP ranks) generate only once
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_DIR", "MODALITIES", "GENERATOR_VERSION", "SyntheticSpec", "SyntheticMSReID",
    "default_spec", "set_default_spec", "using_spec", "ensure_generated", "is_complete",
    "identity_attributes", "expected_files", "raw_pixel_baseline", "attribute_oracle",
    "rank_scores",
]

DATASET_DIR = "synthetic_msreid"
SPLITS = ("train", "test")
MODALITIES = ("RGB", "NI", "TI")
GENERATOR_VERSION = 1  # bump when the rendering changes: old trees are then regenerated
SPEC_FILE = "spec.json"
IDENTITY_FILE = "identities.json"
_NAME_RE = re.compile(r"^(\d{6})_cam(\d+)_(\d{4})\.jpg$")

# Seed-sequence tags: one independent random stream per purpose.
_TAG_IDS, _TAG_CAM, _TAG_IMG = 1, 2, 3


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated tree (written to ``spec.json``).

    ``images_per_camera`` images are rendered for every identity in every camera, so every
    query keeps ``(num_cameras - 1) * images_per_camera`` true matches in other cameras.
    ``noise`` is the pixel-noise std per modality (RGB, NI, TI) on a [0, 1] scale;
    ``camera_shift`` and ``pose_jitter`` scale the per-camera and per-image nuisances
    (0 switches them off); ``clutter`` is the number of candidate background shapes per image.
    """

    num_train_ids: int = 60
    num_test_ids: int = 40
    num_cameras: int = 3
    images_per_camera: int = 4
    height: int = 128
    width: int = 64
    values_per_modality: int = 6
    noise: tuple[float, float, float] = (0.03, 0.04, 0.05)
    camera_shift: float = 1.0
    pose_jitter: float = 1.0
    clutter: int = 4
    jpeg_quality: int = 92
    seed: int = 0

    def __post_init__(self) -> None:
        noise = tuple(float(x) for x in self.noise)
        object.__setattr__(self, "noise", noise)
        checks = [
            ("num_train_ids", self.num_train_ids >= 1, ">= 1"),
            ("num_test_ids", self.num_test_ids >= 1, ">= 1"),
            ("num_cameras", self.num_cameras >= 2,
             ">= 2 (a query needs a true match in another camera)"),
            ("images_per_camera", self.images_per_camera >= 1, ">= 1"),
            ("height", self.height >= 32, ">= 32"),
            ("width", self.width >= 16, ">= 16"),
            ("values_per_modality", 2 <= self.values_per_modality <= 9, "in [2, 9]"),
            ("noise", len(noise) == len(MODALITIES) and min(noise) >= 0,
             f"{len(MODALITIES)} non-negative floats (RGB, NI, TI)"),
            ("camera_shift", self.camera_shift >= 0, ">= 0"),
            ("pose_jitter", self.pose_jitter >= 0, ">= 0"),
            ("clutter", self.clutter >= 0, ">= 0"),
            ("jpeg_quality", 1 <= self.jpeg_quality <= 95, "in [1, 95]"),
            ("seed", self.seed >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"SyntheticSpec.{name}={getattr(self, name)!r}: expected {expected}")
        if self.num_ids > self.values_per_modality ** len(MODALITIES):
            raise ValueError(
                f"SyntheticSpec: {self.num_ids} identities need unique attribute triples but "
                f"values_per_modality={self.values_per_modality} gives only "
                f"{self.values_per_modality ** len(MODALITIES)}; raise values_per_modality"
            )

    @property
    def num_ids(self) -> int:
        """Train + test identities."""
        return self.num_train_ids + self.num_test_ids

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``noise`` as a list)."""
        d = dataclasses.asdict(self)
        d["noise"] = list(self.noise)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SyntheticSpec":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"SyntheticSpec: unknown field(s) {unknown}; "
                             f"expected a subset of {sorted(names)}")
        return cls(**dict(d))


# ----------------------------------------------------------------------------- default spec
_DEFAULT_SPEC = SyntheticSpec()


def default_spec() -> SyntheticSpec:
    """The spec used when ``SyntheticMSReID`` is built without one (e.g. by ImageDataManager)."""
    return _DEFAULT_SPEC


def set_default_spec(spec: SyntheticSpec | Mapping[str, Any] | None = None,
                     **fields: Any) -> SyntheticSpec:
    """Set the process-wide default spec; returns the previous one (to restore it).

    ``set_default_spec(num_train_ids=20, seed=1)`` applies the fields over the *package*
    defaults (not over the current default); ``set_default_spec(spec, seed=1)`` over ``spec``;
    ``set_default_spec()`` resets to the package defaults.
    """
    global _DEFAULT_SPEC
    base = _as_spec(spec) if spec is not None else SyntheticSpec()
    previous = _DEFAULT_SPEC
    _DEFAULT_SPEC = dataclasses.replace(base, **fields) if fields else base
    return previous


@contextlib.contextmanager
def using_spec(spec: SyntheticSpec | Mapping[str, Any] | None = None,
               **fields: Any) -> Iterator[SyntheticSpec]:
    """Context manager form of :func:`set_default_spec`; restores the previous default on exit."""
    previous = set_default_spec(spec, **fields)
    try:
        yield _DEFAULT_SPEC
    finally:
        set_default_spec(previous)


def _as_spec(spec: SyntheticSpec | Mapping[str, Any]) -> SyntheticSpec:
    if isinstance(spec, SyntheticSpec):
        return spec
    if isinstance(spec, Mapping):
        return SyntheticSpec.from_dict(spec)
    raise TypeError("spec: expected SyntheticSpec or a mapping of its fields, "
                    f"got {type(spec).__name__}")


# ----------------------------------------------------------------------------- layout
def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def identity_attributes(spec: SyntheticSpec) -> np.ndarray:
    """``(num_ids, 3)`` int array: attribute value of each identity (row ``pid - 1``) per modality.

    Triples are drawn without replacement from ``values_per_modality ** 3``, so they are unique.
    Train identities are pids ``1..num_train_ids``, test identities the following ones.
    """
    v = spec.values_per_modality
    codes = _rng(spec.seed, _TAG_IDS).permutation(v ** 3)[: spec.num_ids]
    return np.stack([codes // (v * v), (codes // v) % v, codes % v], axis=1)


def _split_pids(spec: SyntheticSpec) -> dict[str, range]:
    return {"train": range(1, spec.num_train_ids + 1),
            "test": range(spec.num_train_ids + 1, spec.num_ids + 1)}


def _file_name(pid: int, cam: int, k: int) -> str:
    return f"{pid:06d}_cam{cam + 1}_{k:04d}.jpg"


def expected_files(spec: SyntheticSpec) -> dict[str, list[tuple[int, int, int, str]]]:
    """Per split: ``(pid, cam0, k, file name)`` of every sample (same name in all modalities)."""
    return {
        split: [(pid, cam, k, _file_name(pid, cam, k))
                for pid in pids for cam in range(spec.num_cameras)
                for k in range(spec.images_per_camera)]
        for split, pids in _split_pids(spec).items()
    }


def _spec_record(spec: SyntheticSpec) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "dataset": DATASET_DIR, "spec": spec.to_dict()}


def is_complete(dataset_dir: str, spec: SyntheticSpec) -> bool:
    """True when ``dataset_dir`` holds the tree ``spec`` describes (spec.json + every file)."""
    try:
        with open(osp.join(dataset_dir, SPEC_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    if record != _spec_record(spec) or not osp.isfile(osp.join(dataset_dir, IDENTITY_FILE)):
        return False
    for split, files in expected_files(spec).items():
        names = {name for *_, name in files}
        for modality in MODALITIES:
            try:
                present = set(os.listdir(osp.join(dataset_dir, split, modality)))
            except OSError:
                return False
            if not names <= present:
                return False
    return True


# ----------------------------------------------------------------------------- rendering
# Attribute tables. A family value v maps to (sub-attribute a, sub-attribute b) through _PAIRS,
# ordered so that the first few values already differ in both sub-attributes.
_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0), (0, 2), (1, 0), (2, 1))
# upper body: red / green / blue; legs: dark / khaki / white
_UPPER = np.array([[0.78, 0.16, 0.14], [0.16, 0.60, 0.22], [0.17, 0.28, 0.80]], np.float32)
_LOWER = np.array([[0.12, 0.12, 0.15], [0.72, 0.62, 0.36], [0.88, 0.88, 0.88]], np.float32)
_SKIN = np.array([0.80, 0.60, 0.46], np.float32)
_STRIPE_ANGLE = np.array([0.0, np.pi / 2, np.pi / 4], np.float32)   # vertical, horizontal, diagonal
_NI_REFLECTANCE = np.array([0.3, 0.52, 0.74], np.float32)           # mean clothing brightness in NI
_BLOB_Y = np.array([0.30, 0.44, 0.68], np.float32)                  # chest, waist, thighs (x H)
# blob shape: (sigma_x (x W), sigma_y (x H), half distance between twin blobs (x W), twin?)
_BLOB_SHAPE = np.array([[0.15, 0.07, 0.0], [0.08, 0.13, 0.0], [0.07, 0.06, 0.13]], np.float32)
_EDGE_SOFTNESS = np.array([1.0, 1.0, 2.5], np.float32)              # px; TI silhouettes are blurry
_GRAY = np.array([False, True, True])                               # NI, TI are grey images


def _camera_params(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Per (camera, modality): photometric shift, channel gains, geometric offset, scene colour."""
    c, m, s = spec.num_cameras, len(MODALITIES), spec.camera_shift
    r = _rng(spec.seed, _TAG_CAM)
    chan = np.exp(r.uniform(-0.18, 0.18, (c, m, 3)) * s)
    chan[:, _GRAY] = 1.0
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


def _render_sample(spec: SyntheticSpec, attrs: np.ndarray, cam: dict[str, np.ndarray],
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
    a_rgb, b_rgb = _PAIRS[int(attrs[0])]
    a_ni, b_ni = _PAIRS[int(attrs[1])]
    a_ti, b_ti = _PAIRS[int(attrs[2])]
    # RGB: clothing colours (attribute) with small per-image colour jitter.
    upper_rgb = (_UPPER[a_rgb] * np.exp(rng.normal(0, 0.07, 3))).astype(f32)
    lower_rgb = (_LOWER[b_rgb] * np.exp(rng.normal(0, 0.07, 3))).astype(f32)
    skin = _SKIN * f32(rng.uniform(0.7, 1.1))
    # NI: clothing reflectance and stripe orientation (attribute); stripe period and phase vary
    # per image.
    period = rng.uniform(6.0, 11.0) * h / 128.0
    along = x[1] * np.cos(_STRIPE_ANGLE[a_ni]) + y[1] * np.sin(_STRIPE_ANGLE[a_ni])
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

    # --- camera photometry, per-image illumination, noise (grey modalities stay grey).
    c = cam
    illum = np.exp(rng.normal(0, 0.06, m)).astype(f32)
    img = ((img - 0.5) * c["contrast"][:, None, None, None] + 0.5 + c["bias"][:, None, None, None])
    img = img * (c["gain"] * illum)[:, None, None, None] * c["chan"][:, :, None, None]
    noise = rng.standard_normal((m, 3, h, w), dtype=f32)
    noise[_GRAY] = noise[_GRAY][:, :1]
    img = img + np.asarray(spec.noise, f32)[:, None, None, None] * noise
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _write_tree(out_dir: str, spec: SyntheticSpec, progress: bool) -> None:
    """Render every sample of ``spec`` into ``out_dir`` (which must be a fresh folder).

    Serial on purpose: the default tree takes ~4-5 s of CPU, and every sample has its own seed,
    so the bytes would not change if this were split across processes.
    """
    from tqdm import tqdm

    attrs = identity_attributes(spec)
    cams = _camera_params(spec)
    cam_params = [{key: v[c] for key, v in cams.items()} for c in range(spec.num_cameras)]
    files = expected_files(spec)
    for split in SPLITS:
        for modality in MODALITIES:
            os.makedirs(osp.join(out_dir, split, modality))
    with tqdm(total=sum(map(len, files.values())), desc=f"generating {DATASET_DIR}",
              unit="sample", disable=not progress, leave=False) as bar:
        for split in SPLITS:
            for pid, cam, k, name in files[split]:
                arr = _render_sample(spec, attrs[pid - 1], cam_params[cam],
                                     _rng(spec.seed, _TAG_IMG, pid, cam, k))
                for modality, pixels in zip(MODALITIES, arr):
                    Image.fromarray(pixels).save(osp.join(out_dir, split, modality, name),
                                                 quality=spec.jpeg_quality)
                bar.update(1)
    identities = {f"{pid:06d}": {"split": split, **dict(zip(MODALITIES, map(int, attrs[pid - 1])))}
                  for split, pids in _split_pids(spec).items() for pid in pids}
    with open(osp.join(out_dir, IDENTITY_FILE), "w", encoding="utf-8") as f:
        json.dump(identities, f, indent=0)
    with open(osp.join(out_dir, SPEC_FILE), "w", encoding="utf-8") as f:   # written last
        json.dump(_spec_record(spec), f, indent=2)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_generated(root: str | os.PathLike = "",
                     spec: SyntheticSpec | Mapping[str, Any] | None = None,
                     progress: bool = True) -> str:
    """Generate ``<root>/synthetic_msreid`` for ``spec`` unless an identical tree exists.

    Returns the dataset folder. Generation writes into a temporary folder beside the target
    and swaps it in with ``os.replace``; on any error the temporary folder is removed and an
    existing tree is left untouched. A lock file ``<root>/.synthetic_msreid.lock`` serialises
    concurrent processes; the second one reuses what the first generated.
    """
    spec = default_spec() if spec is None else _as_spec(spec)
    root = osp.abspath(osp.expanduser(root))
    target = osp.join(root, DATASET_DIR)
    if is_complete(target, spec):
        return target
    os.makedirs(root, exist_ok=True)
    with _locked(osp.join(root, f".{DATASET_DIR}.lock")):
        if is_complete(target, spec):
            return target
        stale = osp.lexists(target)
        logger.info("%s %s (%d train + %d test ids, %d cameras, %d images/id/camera, %dx%d)",
                    "regenerating stale" if stale else "generating", target, spec.num_train_ids,
                    spec.num_test_ids, spec.num_cameras, spec.images_per_camera,
                    spec.height, spec.width)
        tmp = tempfile.mkdtemp(prefix=f".{DATASET_DIR}.tmp-", dir=root)
        try:
            _write_tree(tmp, spec, progress)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _swap_in(tmp: str, target: str) -> None:
    """Move ``tmp`` to ``target``; an existing target is moved aside first, then deleted."""
    if not osp.lexists(target):
        os.replace(tmp, target)
        return
    old = f"{osp.join(osp.dirname(target), '.' + DATASET_DIR)}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if osp.isdir(old) and not osp.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)


# ----------------------------------------------------------------------------- dataset
class SyntheticMSReID(RGBNT201):
    """Synthetic tri-modal re-id data set, generated on first use (see module docstring).

    Same protocol as RGBNT201: query and gallery are both the ``test`` split, camera ids are
    0-based, train pids are relabelled. ``spec`` defaults to :func:`default_spec`.
    """

    dataset_dir = DATASET_DIR
    train_dir = "train"
    test_dir = "test"

    def __init__(self, root: str = "", spec: SyntheticSpec | Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.spec = default_spec() if spec is None else _as_spec(spec)
        kwargs.pop("download", None)  # generated locally, nothing to download
        ensure_generated(root, self.spec, progress=bool(kwargs.get("verbose", True)))
        super().__init__(root=root, **kwargs)


# ----------------------------------------------------------------------------- analysis
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


def _combos() -> list[tuple[int, ...]]:
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
    sets = [tuple(index[n] for n in c) for c in combos] if combos else _combos()
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
    jitter = _rng(seed, 99).random((len(files), len(files))) * 1e-3
    out = {}
    for s in _combos():
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
