"""The ``synthetic_msreid`` torchreid data set: generated on first use, then read as RGBNT201."""
from __future__ import annotations

from typing import Any, Mapping

from ..rgbnt201 import RGBNT201
from .generate import ensure_generated
from .spec import DATASET_DIR, SyntheticSpec, as_spec, default_spec

__all__ = ["SyntheticMSReID"]


class SyntheticMSReID(RGBNT201):
    """Synthetic tri-modal re-id data set, generated on first use (see ``docs/synthetic.md``).

    Same protocol as RGBNT201: query and gallery are both the ``test`` split, camera ids are
    0-based, train pids are relabelled. ``spec`` defaults to :func:`default_spec`.
    """

    dataset_dir = DATASET_DIR
    train_dir = "train"
    test_dir = "test"

    def __init__(self, root: str = "", spec: SyntheticSpec | Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.spec = default_spec() if spec is None else as_spec(spec)
        kwargs.pop("download", None)  # generated locally, nothing to download
        ensure_generated(root, self.spec, progress=bool(kwargs.get("verbose", True)))
        super().__init__(root=root, **kwargs)
