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

Every :class:`SyntheticSpec` has its own folder ``<root>/synthetic_msreid/<key>/``
(:func:`spec_folder`, ``key`` = :func:`spec_key`: readable fields and a hash of the spec)
holding ``{train,test}/{RGB,NI,TI}/<pid:06d>_cam<c>_<k:04d>.jpg`` (RGBNT201 style, cameras
1-based in the names). It is generated on first use into a temporary folder beside it and moved
into place with ``os.replace``; later constructions reuse it; a command with another spec
never rewrites it, and only a damaged copy (a file missing) is generated again, with a warning.
Every image is rendered from its own seed ``(seed, pid, cam, k)``, so the output is independent
of generation order.

torchreid's ``ImageDataManager`` cannot pass a spec to the dataset: set the default with
:func:`set_default_spec` or, scoped, with :func:`using_spec`.

Modules: ``spec`` (the spec and the default spec; pure Python), ``render`` (one sample's
pixels), ``localized`` (one sample of the ``cue="localized"`` design), ``generate`` (the tree
on disk), ``dataset`` (the torchreid data set).
"""
from __future__ import annotations

from .dataset import SyntheticMSReID
from .generate import (
    CUE_FILE,
    GENERATOR_VERSION,
    IDENTITY_FILE,
    SPEC_FILE,
    SPLITS,
    damage,
    ensure_generated,
    expected_files,
    identity_attributes,
    is_complete,
    read_cues,
    spec_folder,
    spec_key,
)
from .spec import (
    CUES,
    DATASET_DIR,
    MODALITIES,
    SyntheticSpec,
    default_spec,
    set_default_spec,
    using_spec,
)

__all__ = [
    "DATASET_DIR", "MODALITIES", "CUES", "SPLITS", "GENERATOR_VERSION", "SPEC_FILE",
    "IDENTITY_FILE", "CUE_FILE", "SyntheticSpec", "SyntheticMSReID", "default_spec",
    "set_default_spec", "using_spec", "ensure_generated", "is_complete", "identity_attributes",
    "expected_files", "read_cues", "spec_key", "spec_folder", "damage",
]
