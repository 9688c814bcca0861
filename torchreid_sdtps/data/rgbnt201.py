"""RGBNT201: multi-modal (RGB / near-infrared / thermal) person re-identification.

Layout (as read by the public DeMo / TOP-ReID loaders)::

    <root>/RGBNT201/
        train_171/{RGB,NI,TI}/<pid:6>_cam<c>_*.jpg   same file name in the three folders
        test/{RGB,NI,TI}/<pid:6>_cam<c>_*.jpg        used as query AND gallery

Train pids are relabelled 0..n-1 (increasing pid order); camids are ``c - 1`` (0-based).
Query and gallery are both ``test/``: torchreid's evaluator drops same-pid same-camera gallery
entries, so each query's own image never counts.
"""
from __future__ import annotations

import os.path as osp
import re
from typing import Any

from ..choices import MODALITIES
from .multimodal import (
    DatasetFormatError,
    MultiModalFolderDataset,
    relabel_pids,
    scan_modality_folders,
)

__all__ = ["RGBNT201"]


class RGBNT201(MultiModalFolderDataset):
    """RGBNT201 (Zheng et al., AAAI 2021): 201 identities, 4 cameras, RGB/NI/TI triplets.

    ``dataset_dir``, ``train_dir`` and ``test_dir`` are class attributes so that a dataset
    with the same layout under other folder names is a three-line subclass.
    ``RGBNT201(root="", download=False, **kwargs)``; ``kwargs`` (``transform``, ``mode``,
    ``combineall``, ``verbose``, ``k_tfm`` and torchreid's extra data-manager keywords) go to
    :class:`~torchreid_sdtps.data.multimodal.MultiModalImageDataset`.
    """

    dataset_dir = "RGBNT201"
    train_dir = "train_171"
    test_dir = "test"
    modality_dirs: tuple[str, ...] = MODALITIES
    _name_re = re.compile(r"^(\d+)_cam(\d+)")

    def __init__(self, root: str = "", download: bool = False, **kwargs: Any) -> None:
        super().__init__(root=root, download=download, **kwargs)

    @classmethod
    def split_dirs(cls) -> dict[str, str]:
        """Train from ``train_dir``; query and gallery both from ``test_dir``."""
        return {"train": cls.train_dir, "query": cls.test_dir, "gallery": cls.test_dir}

    @classmethod
    def layout_lines(cls) -> list[str]:
        """The expected folder layout."""
        mods = ",".join(cls.modality_dirs)
        return [
            f"  <root>/{cls.dataset_dir}/",
            f"      {cls.train_dir}/{{{mods}}}/<pid:6>_cam<c>_*.jpg   (training set)",
            f"      {cls.test_dir}/{{{mods}}}/<pid:6>_cam<c>_*.jpg   (query and gallery)",
            "  each image name must exist in all modality folders",
        ]

    def build_split(self, folder: str, split: str) -> list:
        """One sample per image name found in the modality folders of ``folder``."""
        samples = []
        for paths in scan_modality_folders(folder, self.modality_dirs, self.modalities):
            name = osp.basename(paths[0])
            match = self._name_re.match(name)
            if match is None:
                raise DatasetFormatError(
                    f"{type(self).__name__}: cannot parse '{paths[0]}': expected a name like "
                    "'<pid:6>_cam<c>_*.jpg' (e.g. 000001_cam1_0001.jpg)"
                )
            samples.append((paths, int(match.group(1)), int(match.group(2)) - 1))
        return relabel_pids(samples) if split == "train" else samples
