"""MSVR310: multi-spectral vehicle re-identification (RGB / NI / TI) across scenes.

Layout (as read by the public DeMo / TOP-ReID loaders)::

    <root>/MSVR310/
        bounding_box_train/<vid>/{vis,ni,th}/<file>
        query3/<vid>/{vis,ni,th}/<file>
        bounding_box_test/<vid>/{vis,ni,th}/<file>

File names encode vehicle id ``name[0:4]``, scene ``name[6:9]`` and camera ``name[11]``
(e.g. ``0001_s001_v1_000.jpg``). The MSVR310 protocol ignores gallery entries of the same
vehicle captured in the *same scene* (any camera). To let torchreid's stock ``evaluate_rank``
(which drops same pid & same camid) apply exactly this rule, query and gallery samples carry
the **scene** index as ``camid``; train samples carry the real camera. ``camera_label()``
always returns the real camera parsed from the file name (for camera embeddings).
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Any

from .multimodal import (
    DatasetFormatError,
    MultiModalFolderDataset,
    relabel_pids,
    scan_modality_folders,
)

__all__ = ["MSVR310", "parse_msvr310_name"]


def parse_msvr310_name(path: str) -> tuple[int, int, int]:
    """``(vehicle id, scene, camera)`` from an MSVR310 file name (positions 0:4, 6:9, 11)."""
    name = osp.basename(path)
    fields = (name[0:4], name[6:9], name[11:12])
    if len(name) < 12 or not all(f.isdigit() for f in fields):
        raise DatasetFormatError(
            f"MSVR310: cannot parse '{path}': expected name[0:4] = vehicle id, name[6:9] = "
            "scene, name[11] = camera (e.g. 0001_s001_v1_000.jpg)"
        )
    vid, scene, cam = (int(f) for f in fields)
    return vid, scene, cam


class MSVR310(MultiModalFolderDataset):
    """MSVR310 (Zheng et al., 2022): 310 vehicles, multiple scenes, RGB/NI/TI triplets.

    ``MSVR310(root="", download=False, **kwargs)``. Query/gallery ``camid`` = scene index (the
    evaluation protocol); train ``camid`` = camera; :meth:`camera_label` = camera everywhere.
    """

    dataset_dir = "MSVR310"
    modality_dirs: tuple[str, ...] = ("vis", "ni", "th")

    def __init__(self, root: str = "", download: bool = False, **kwargs: Any) -> None:
        super().__init__(root=root, download=download, **kwargs)

    @classmethod
    def split_dirs(cls) -> dict[str, str]:
        """Split folders; the query set of the protocol is ``query3``."""
        return {"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"}

    @classmethod
    def layout_lines(cls) -> list[str]:
        """The expected folder layout."""
        mods = ",".join(cls.modality_dirs)
        return [
            f"  <root>/{cls.dataset_dir}/",
            f"      bounding_box_train/<vid>/{{{mods}}}/<file>",
            f"      query3/<vid>/{{{mods}}}/<file>",
            f"      bounding_box_test/<vid>/{{{mods}}}/<file>",
            "  <file>: name[0:4] vehicle id, name[6:9] scene, name[11] camera "
            "(e.g. 0001_s001_v1_000.jpg), present in all modality folders",
        ]

    def build_split(self, folder: str, split: str) -> list:
        """Train: ``(paths, vid, camera)`` relabelled; query/gallery: ``(paths, vid, scene)``."""
        samples = []
        for vdir in sorted(os.listdir(folder)):
            if not osp.isdir(osp.join(folder, vdir)):
                continue
            for paths in scan_modality_folders(osp.join(folder, vdir), self.modality_dirs,
                                               self.modalities):
                vid, scene, cam = parse_msvr310_name(paths[0])
                samples.append((paths, vid, cam if split == "train" else scene))
        return relabel_pids(samples) if split == "train" else samples

    def camera_label(self, sample: tuple) -> int:
        """The real camera index parsed from the file name (in every split)."""
        return parse_msvr310_name(sample[0][0])[2]

    def combine_all(self) -> None:
        """As torchreid's, but query/gallery samples join the train set with their camera."""
        query, gallery = self.query, self.gallery
        self.query = [(s[0], s[1], self.camera_label(s), *s[3:]) for s in query]
        self.gallery = [(s[0], s[1], self.camera_label(s), *s[3:]) for s in gallery]
        try:
            super().combine_all()
        finally:
            self.query, self.gallery = query, gallery
