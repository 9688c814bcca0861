"""RGBNT100: multi-modal vehicle re-identification with side-by-side RGB|NI|TI images.

Layout (as read by the public DeMo / TOP-ReID loaders)::

    <root>/RGBNT100/rgbir/
        bounding_box_train/<pid>_c<cam>*.jpg
        query/<pid>_c<cam>*.jpg
        bounding_box_test/<pid>_c<cam>*.jpg

Each file holds the three modalities side by side (RGB | NI | TI; 768x128 in the release,
i.e. three 256x128 parts) and is split into three equal parts on load. pid and camera are
parsed with ``([-\\d]+)_c(\\d+)`` from the file name; cameras are made 0-based. Like
Market-1501, images of pid -1 (junk) are skipped; pid 0 is kept.
"""
from __future__ import annotations

import os.path as osp
import re
from typing import Any

from .multimodal import DatasetFormatError, MultiModalFolderDataset, list_images, relabel_pids

__all__ = ["RGBNT100"]


class RGBNT100(MultiModalFolderDataset):
    """RGBNT100 (Li et al., AAAI 2020): 100 vehicles, 8 cameras, side-by-side triplets.

    ``RGBNT100(root="", download=False, **kwargs)``; there is no automatic download (the
    dataset is only on Baidu Pan), ``download=True`` raises an error saying where to get it.
    """

    dataset_dir = "RGBNT100"
    _name_re = re.compile(r"([-\d]+)_c(\d+)")
    _junk_pids = [-1]

    def __init__(self, root: str = "", download: bool = False, **kwargs: Any) -> None:
        super().__init__(root=root, download=download, **kwargs)

    @classmethod
    def split_dirs(cls) -> dict[str, str]:
        """Market-1501-style split folders under ``rgbir/``."""
        return {"train": "rgbir/bounding_box_train", "query": "rgbir/query",
                "gallery": "rgbir/bounding_box_test"}

    @classmethod
    def layout_lines(cls) -> list[str]:
        """The expected folder layout."""
        return [
            f"  <root>/{cls.dataset_dir}/rgbir/",
            "      bounding_box_train/<pid>_c<cam>*.jpg",
            "      query/<pid>_c<cam>*.jpg",
            "      bounding_box_test/<pid>_c<cam>*.jpg",
            "  each image holds RGB | NI | TI side by side (e.g. 768x128 = 3 x 256x128)",
        ]

    def build_split(self, folder: str, split: str) -> list:
        """One sample ``((path,), pid, camid)`` per image; pid -1 (junk) skipped."""
        samples = []
        for name in list_images(folder):
            match = self._name_re.search(name)
            if match is None or not match.group(2):
                raise DatasetFormatError(
                    f"{type(self).__name__}: cannot parse '{osp.join(folder, name)}': expected a "
                    "name like '<pid>_c<cam>*.jpg' (e.g. 0001_c003_0001.jpg)"
                )
            pid, cam = int(match.group(1)), int(match.group(2))
            if pid == -1:
                continue  # junk, as in Market-1501
            samples.append(((osp.join(folder, name),), pid, cam - 1))
        return relabel_pids(samples) if split == "train" else samples
