"""The samples of one split of a registered data set as plain lists, for the commands that
extract features or check an export on a data set (no data manager, no transforms)."""
from __future__ import annotations

from typing import Any

from .. import compat
from ..errors import ConfigError
from ..registry import lookup

__all__ = ["SPLITS", "dataset_samples"]

SPLITS: tuple[str, ...] = ("train", "query", "gallery")


def dataset_samples(name: str, split: str, root: str, spec: Any = None
                    ) -> tuple[list[tuple[str, ...]], list[int], list[int], list[int]]:
    """``(paths, pids, camids, cam_labels)`` of split ``split`` of the data set registered as
    ``name`` with torchreid (``synthetic_msreid`` generated from ``spec``, default the
    package's). A third party's data set must be registered first (``load_plugins()``, which
    the commands call)."""
    factory = lookup(compat.image_dataset_registry(), "dataset", name)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got '{split}'")
    kwargs: dict[str, Any] = {"root": root, "verbose": False}
    if spec is not None and name == "synthetic_msreid":
        kwargs["spec"] = spec
    dataset = factory(**kwargs)
    samples = getattr(dataset, split)
    cam = getattr(dataset, "camera_label", lambda s: int(s[2]))
    return ([tuple(s[0]) for s in samples], [int(s[1]) for s in samples],
            [int(s[2]) for s in samples], [int(cam(s)) for s in samples])
