"""The ``synthetic_msreid`` torchreid data set: generated on first use, then read as RGBNT201."""
from __future__ import annotations

import os.path as osp
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..rgbnt201 import RGBNT201
from .generate import ensure_generated, read_cues
from .spec import DATASET_DIR, SyntheticSpec, as_spec, default_spec

__all__ = ["SyntheticMSReID"]


class SyntheticMSReID(RGBNT201):
    """Synthetic tri-modal re-id data set, generated on first use (see ``docs/synthetic.md``).

    Same protocol as RGBNT201: query and gallery are both the ``test`` split, camera ids are
    0-based, train pids are relabelled. ``spec`` defaults to :func:`default_spec`.

    With ``cue="localized"`` the data set also carries the ground truth of token selection:
    :attr:`cue_grid` and :meth:`cue_patches` (both ``None`` for the spread design); this is the
    protocol :mod:`torchreid_sdtps.metrics.selection` reads.
    """

    dataset_dir = DATASET_DIR
    train_dir = "train"
    test_dir = "test"

    def __init__(self, root: str = "", spec: SyntheticSpec | Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.spec = default_spec() if spec is None else as_spec(spec)
        kwargs.pop("download", None)  # generated locally, nothing to download
        folder = ensure_generated(root, self.spec, progress=bool(kwargs.get("verbose", True)))
        self._cues = read_cues(folder)
        # this spec's own folder, <root>/synthetic_msreid/<spec key>/
        self.dataset_dir = osp.join(DATASET_DIR, osp.basename(folder))
        super().__init__(root=root, **kwargs)

    @property
    def cue_grid(self) -> tuple[int, int] | None:
        """Patch grid (rows, cols) the cue cells index, or None without ground truth."""
        return None if self._cues is None else tuple(self._cues["grid"])  # type: ignore[return-value]

    def cue_patches(self, paths: str | Sequence[str]) -> np.ndarray | None:
        """Cue cells ``(M, R)`` (row-major in :attr:`cue_grid`) of the sample with image
        ``paths`` (its modality paths or any one of them); None without ground truth."""
        if self._cues is None:
            return None
        path = paths if isinstance(paths, str) else paths[0]
        key = f"{osp.basename(osp.dirname(osp.dirname(path)))}/{osp.basename(path)}"
        try:
            return np.asarray(self._cues["cues"][key], dtype=np.int64)
        except KeyError:
            raise KeyError(f"cue_patches: no cue record for '{path}' (key '{key}') in "
                           f"{self.dataset_path}/cues.json") from None
