"""The :class:`SyntheticSpec` of ``synthetic_msreid`` and the process-wide default spec.

Pure Python (no numpy, torch or torchreid imports) so that the config defaults can be built
from the spec's fields without importing the data set.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...choices import MODALITIES
from ...errors import ConfigError

__all__ = ["DATASET_DIR", "MODALITIES", "CUES", "SyntheticSpec", "default_spec", "set_default_spec",
           "using_spec", "as_spec"]

DATASET_DIR = "synthetic_msreid"
CUES = ("spread", "localized")


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated tree (written to ``spec.json``).

    ``images_per_camera`` images are rendered for every identity in every camera, so every
    query keeps ``(num_cameras - 1) * images_per_camera`` true matches in other cameras.
    ``noise`` is the pixel-noise std per modality (RGB, NI, TI) on a [0, 1] scale;
    ``camera_shift`` and ``pose_jitter`` scale the per-camera and per-image nuisances
    (0 switches them off); ``clutter`` is the number of candidate background shapes per image.

    ``cue`` picks the identity design: ``"spread"`` (default) paints the attributes over the
    whole body; ``"localized"`` shows each modality's attribute only in a framed region of
    ``cue_size`` (rows, cols) cells of the ``patch_size`` grid, at a random position per image
    and modality, amid cells of random attribute values (see ``docs/synthetic.md``). The
    generator then records the cue cells of every image (``cues.json``). ``distractors``
    (localized only) shows that many *other* identities of the same split in every image, each
    in as many unframed cells as the cue has, so that pooling all patches mixes identities.
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
    cue: str = "spread"
    cue_size: tuple[int, int] = (1, 2)
    patch_size: int = 16
    distractors: int = 0

    def __post_init__(self) -> None:
        noise = tuple(float(x) for x in self.noise)
        object.__setattr__(self, "noise", noise)
        cue_size = tuple(int(x) for x in self.cue_size)
        object.__setattr__(self, "cue_size", cue_size)
        grid = (self.height // max(1, self.patch_size), self.width // max(1, self.patch_size))
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
            ("cue", self.cue in CUES, f"one of {CUES}"),
            ("patch_size", self.patch_size >= 8, ">= 8"),
            ("distractors", self.distractors >= 0, ">= 0"),
            ("distractors", self.distractors == 0 or self.cue == "localized",
             "0 unless cue='localized'"),
            ("distractors", self.distractors < max(self.num_train_ids, 1)
             and self.distractors < max(self.num_test_ids, 1),
             "fewer than the identities of each split (other identities are shown)"),
        ]
        if self.cue == "localized":
            checks += [
                ("patch_size", self.height % self.patch_size == 0
                 and self.width % self.patch_size == 0,
                 f"a divisor of height={self.height} and width={self.width} (cue='localized')"),
                ("cue_size", len(cue_size) == 2 and min(cue_size) >= 1
                 and cue_size[0] * cue_size[1] < grid[0] * grid[1]
                 and cue_size[0] <= grid[0] and cue_size[1] <= grid[1],
                 f"(rows, cols) >= 1 that fit the {grid[0]}x{grid[1]} patch grid with room "
                 "for clutter"),
                ("distractors", (self.distractors + 1) * cue_size[0] * cue_size[1]
                 <= grid[0] * grid[1],
                 f"at most {grid[0] * grid[1] // max(1, cue_size[0] * cue_size[1]) - 1}: the cue "
                 f"and each distractor take {cue_size[0] * cue_size[1]} of the "
                 f"{grid[0] * grid[1]} cells"),
            ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"SyntheticSpec.{name}={getattr(self, name)!r}: expected {expected}")
        if self.num_ids > self.values_per_modality ** len(MODALITIES):
            raise ConfigError(
                f"SyntheticSpec: {self.num_ids} identities need unique attribute triples but "
                f"values_per_modality={self.values_per_modality} gives only "
                f"{self.values_per_modality ** len(MODALITIES)}; raise values_per_modality"
            )

    @property
    def num_ids(self) -> int:
        """Train + test identities."""
        return self.num_train_ids + self.num_test_ids

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of ``patch_size`` cells that ``cue="localized"`` aligns to."""
        return self.height // self.patch_size, self.width // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["noise"] = list(self.noise)
        d["cue_size"] = list(self.cue_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"SyntheticSpec: unknown field(s) {unknown}; "
                             f"expected a subset of {sorted(names)}")
        return cls(**dict(d))


def as_spec(spec: SyntheticSpec | Mapping[str, Any]) -> SyntheticSpec:
    """``spec`` itself, or the spec a mapping of its fields describes."""
    if isinstance(spec, SyntheticSpec):
        return spec
    if isinstance(spec, Mapping):
        return SyntheticSpec.from_dict(spec)
    raise TypeError("spec: expected SyntheticSpec or a mapping of its fields, "
                    f"got {type(spec).__name__}")


# torchreid's ImageDataManager cannot pass a spec to the data set: it reads this default.
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
    base = as_spec(spec) if spec is not None else SyntheticSpec()
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
