"""Builders of tiny dataset trees in the real folder layouts (shared by the tests).

Each builder writes small random JPEGs (deterministic for a given ``seed``) under ``root`` and
returns ``str(root)``, the value to pass as ``root=`` to a dataset or ``ImageDataManager``.
``size=(H, W)`` is the size of one modality image. Train and test identities are disjoint;
cameras are numbered from 1 in file names (datasets make them 0-based).
"""
from __future__ import annotations

import os
import os.path as osp

import numpy as np
from PIL import Image

__all__ = ["write_jpeg", "make_rgbnt201_tree", "make_rgbnt100_tree", "make_msvr310_tree"]


def write_jpeg(path: str, array: np.ndarray) -> str:
    """Write a uint8 ``(H, W, 3)`` array as a JPEG (creating folders); return the path."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array.astype(np.uint8), "RGB").save(path, quality=95)
    return path


def _noise(rng: np.random.RandomState, size: tuple[int, int]) -> np.ndarray:
    return rng.randint(0, 256, size=(size[0], size[1], 3)).astype(np.uint8)


def make_rgbnt201_tree(root, num_ids: int = 4, cams: int = 2, per_cam: int = 2,
                       size: tuple[int, int] = (32, 16), seed: int = 0,
                       test_ids: int | None = None, same_modalities: bool = False) -> str:
    """``<root>/RGBNT201/{train_171,test}/{RGB,NI,TI}/<pid:6>_cam<c>_<k:04d>.jpg``.

    ``num_ids`` train identities (pids 1..num_ids) and ``test_ids`` (default ``num_ids``) test
    identities (pids after them), each with ``per_cam`` images in each of ``cams`` cameras.
    ``same_modalities=True`` writes the same image to RGB, NI and TI.
    """
    rng = np.random.RandomState(seed)
    test_ids = num_ids if test_ids is None else test_ids
    base = osp.join(str(root), "RGBNT201")
    splits = (("train_171", range(1, num_ids + 1)),
              ("test", range(num_ids + 1, num_ids + test_ids + 1)))
    for split, pids in splits:
        for pid in pids:
            for cam in range(1, cams + 1):
                for k in range(per_cam):
                    name = f"{pid:06d}_cam{cam}_{k:04d}.jpg"
                    img = _noise(rng, size)
                    for mod in ("RGB", "NI", "TI"):
                        write_jpeg(osp.join(base, split, mod, name),
                                   img if same_modalities else _noise(rng, size))
    return str(root)


def make_rgbnt100_tree(root, num_ids: int = 4, cams: int = 2, per_cam: int = 2,
                       size: tuple[int, int] = (16, 32), seed: int = 0,
                       test_ids: int | None = None, junk: bool = False) -> str:
    """``<root>/RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/<pid:04d>_c<cam:03d>_<k:04d>.jpg``.

    Each file is ``H x 3W``: RGB | NI | TI side by side, each part ``size`` with its own mean
    grey level (parts differ). Test identities: gallery has every camera x ``per_cam`` images,
    query one image per camera. ``junk=True`` adds a pid -1 image to the gallery.
    """
    rng = np.random.RandomState(seed)
    test_ids = num_ids if test_ids is None else test_ids
    base = osp.join(str(root), "RGBNT100", "rgbir")

    def side_by_side() -> np.ndarray:
        parts = [np.clip(_noise(rng, size) // 4 + 64 * (m + 1) - 32, 0, 255) for m in range(3)]
        return np.concatenate(parts, axis=1)

    def write(split: str, pid: int, cam: int, k: int) -> None:
        write_jpeg(osp.join(base, split, f"{pid:04d}_c{cam:03d}_{k:04d}.jpg"), side_by_side())

    for pid in range(1, num_ids + 1):
        for cam in range(1, cams + 1):
            for k in range(per_cam):
                write("bounding_box_train", pid, cam, k)
    for pid in range(num_ids + 1, num_ids + test_ids + 1):
        for cam in range(1, cams + 1):
            write("query", pid, cam, 0)
            for k in range(per_cam):
                write("bounding_box_test", pid, cam, k + 1)
    if junk:
        write_jpeg(osp.join(base, "bounding_box_test", "-1_c001_0000.jpg"), side_by_side())
    return str(root)


def make_msvr310_tree(root, num_ids: int = 4, cams: int = 2, per_cam: int = 2,
                      size: tuple[int, int] = (16, 32), seed: int = 0,
                      test_ids: int | None = None, scenes: int = 2) -> str:
    """``<root>/MSVR310/{bounding_box_train,query3,bounding_box_test}/<vid:04d>/{vis,ni,th}/<file>``.

    File names ``<vid:04d>_s<scene:03d>_v<cam>_<k:03d>.jpg`` (vehicle = name[0:4], scene =
    name[6:9], camera = name[11]); every vehicle appears in ``scenes`` scenes x ``cams``
    cameras x ``per_cam`` images. Query holds, per test vehicle, the first image of every scene
    and camera (k = 0); the gallery holds the others.
    """
    rng = np.random.RandomState(seed)
    test_ids = num_ids if test_ids is None else test_ids
    base = osp.join(str(root), "MSVR310")

    def write(split: str, vid: int, scene: int, cam: int, k: int) -> None:
        name = f"{vid:04d}_s{scene:03d}_v{cam}_{k:03d}.jpg"
        for mod in ("vis", "ni", "th"):
            write_jpeg(osp.join(base, split, f"{vid:04d}", mod, name), _noise(rng, size))

    for split, vids in (("train", range(1, num_ids + 1)),
                        ("test", range(num_ids + 1, num_ids + test_ids + 1))):
        for vid in vids:
            for scene in range(1, scenes + 1):
                for cam in range(1, cams + 1):
                    for k in range(per_cam + (split == "test")):
                        folder = ("bounding_box_train" if split == "train"
                                  else "query3" if k == 0 else "bounding_box_test")
                        write(folder, vid, scene, cam, k)
    return str(root)
