"""Multi-modal (RGB / NI / TI) image dataset built on torchreid's ``ImageDataset``.

A sample is ``(paths, pid, camid, dsetid)``: ``paths`` holds one file per modality (order of
:attr:`MultiModalImageDataset.modalities`), or a 1-tuple naming one side-by-side image that is
split horizontally into M equal parts (RGBNT100). ``__getitem__`` returns torchreid's item dict
with ``img`` of shape ``(M, 3, H, W)``, so batches are ``(B, M, 3, H, W)`` and torchreid's
samplers, data manager and engines work unchanged.

Random transforms are *synchronised across the modalities of one sample*: the Python, NumPy and
torch RNG states are saved before the first modality and restored before each further one, so
every modality gets the same flip, crop and erased box (the state left behind is the one after
the last modality, so the next sample draws anew). DeMo augments every modality independently;
``sync_modalities = False`` on a data set (config ``data.sync_modalities``) does the same.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from .. import compat
from ..choices import MODALITIES
from ..dist import is_main_process
from ..errors import SDTPSError
from .download import download_dataset, how_to_get  # gdown itself is imported only on use

__all__ = [
    "MultiModalImageDataset", "read_image", "load_modalities", "apply_synchronized",
    "ImageReadError", "MissingModalityError", "DatasetNotFoundError", "EmptySplitError",
    "DatasetFormatError", "IMAGE_EXTENSIONS", "MultiModalFolderDataset", "list_images",
    "scan_modality_folders", "relabel_pids",
]

logger = logging.getLogger(__name__)

#: file endings treated as images when a split folder is scanned (other files are ignored)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")

Sample = tuple  # (paths: tuple[str, ...], pid: int, camid: int, dsetid: int)


class ImageReadError(SDTPSError, OSError):
    """An image file exists but cannot be decoded (corrupt, truncated, not an image)."""


class MissingModalityError(SDTPSError, FileNotFoundError):
    """The file of one modality of a sample does not exist."""


class DatasetNotFoundError(SDTPSError, FileNotFoundError):
    """The dataset folder (or one of its split folders) is not where it is expected."""


class EmptySplitError(SDTPSError, ValueError):
    """A split (train / query / gallery) holds no sample."""


class DatasetFormatError(SDTPSError, ValueError):
    """A file name does not follow the dataset's naming scheme."""


def read_image(path: str, modality: str = "image") -> Image.Image:
    """Read ``path`` as an RGB PIL image, failing fast (never retrying).

    torchreid's own ``read_image`` retries forever on ``IOError``; here a missing file raises
    :class:`MissingModalityError` and an undecodable or truncated one :class:`ImageReadError`,
    both naming the modality and the path. Truncated images are *not* tolerated (PIL's
    ``LOAD_TRUNCATED_IMAGES`` is left alone), the pixels are decoded here by ``load()``.
    """
    if not osp.isfile(path):
        raise MissingModalityError(f"{modality} image not found: '{path}'")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            f"cannot read {modality} image '{path}' ({type(exc).__name__}: {exc}); "
            "the file is corrupt, truncated or not an image"
        ) from exc


def load_modalities(paths: Sequence[str], modalities: Sequence[str]) -> list[Image.Image]:
    """Load the M modality images of one sample, all of the first modality's size.

    ``paths`` has one path per modality, or one path to a side-by-side image whose width is
    split into M parts (boundaries at ``i * W // M``). Modality images of different sizes are
    resized (bilinear) to the size of the first modality, so they stack and share crop boxes.
    """
    num = len(modalities)
    if len(paths) == num:
        imgs = [read_image(p, m) for p, m in zip(paths, modalities)]
    elif len(paths) == 1:
        img = read_image(paths[0], "side-by-side " + "|".join(modalities))
        width, height = img.size
        if width < num:
            raise ImageReadError(
                f"side-by-side image '{paths[0]}' is {width} px wide; cannot split it into "
                f"{num} parts ({'|'.join(modalities)})"
            )
        imgs = [img.crop((i * width // num, 0, (i + 1) * width // num, height)) for i in range(num)]
    else:
        raise DatasetFormatError(
            f"sample has {len(paths)} paths {tuple(paths)}; expected {num} "
            f"(one per modality {tuple(modalities)}) or 1 side-by-side image"
        )
    size = imgs[0].size
    return [im if im.size == size else im.resize(size, Image.Resampling.BILINEAR) for im in imgs]


def _as_tensor(img: Any) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else to_tensor(img)


def apply_synchronized(transform: Callable | None, images: Sequence[Image.Image],
                       synchronized: bool = True) -> torch.Tensor:
    """Apply ``transform`` to each image with the same random draws; return ``(M, 3, H, W)``.
    ``synchronized=False``: every image draws its own numbers (DeMo's augmentation).

    Python's ``random``, NumPy's global RNG and torch's CPU RNG are saved before the first image
    and restored before each further image. The state after the last image is kept, so the next
    call draws different numbers. Stateful transforms (torchreid's ``random_patch`` keeps a
    patch pool) cannot be fully synchronised this way.
    """
    if transform is None:
        return torch.stack([_as_tensor(im) for im in images]).float()
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    out = []
    for i, img in enumerate(images):
        if i and synchronized:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        out.append(_as_tensor(transform(img)))
    return torch.stack(out).float()


class MultiModalImageDataset(compat.image_dataset_base()):
    """torchreid ``ImageDataset`` whose items are multi-modal image stacks.

    Args (as torchreid's ``ImageDataset``): ``train``, ``query``, ``gallery`` lists of
    ``(paths, pid, camid[, dsetid])``; keyword arguments ``transform``, ``k_tfm``, ``mode``,
    ``combineall``, ``verbose`` (other keywords are accepted and ignored, as in torchreid).

    ``__getitem__`` returns ``{"img": FloatTensor (M,3,H,W) (a list of k_tfm of them when
    k_tfm > 1), "pid", "camid", "cam_label", "impath": tuple of paths, "dsetid"}``; ``cam_label``
    is :meth:`camera_label` of the sample (the true camera, for camera embeddings), which may
    differ from ``camid`` (the id the evaluation protocol uses).
    """

    modalities: tuple[str, ...] = MODALITIES
    sync_modalities: bool = True  # same random draws for the M images of a sample
    _cam_labels: dict | None = None  # (paths, dsetid) -> camera label (datasets built by __add__)

    def __init__(self, train: list, query: list, gallery: list,
                 modalities: Sequence[str] | None = None, **kwargs: Any) -> None:
        if modalities is not None:
            self.modalities = tuple(modalities)
        train, query, gallery = (
            self._normalize_split(name, split)
            for name, split in (("train", train), ("query", query), ("gallery", gallery))
        )
        super().__init__(train, query, gallery, **kwargs)

    # ------------------------------------------------------------------ samples
    def _normalize_split(self, name: str, split: Iterable) -> list:
        """Check one split and turn every ``paths`` into a tuple (hashable, collatable)."""
        num = len(self.modalities)
        out = []
        for sample in split:
            paths = sample[0]
            paths = (paths,) if isinstance(paths, str) else tuple(paths)
            if len(paths) not in (1, num):
                raise DatasetFormatError(
                    f"{type(self).__name__} {name} sample {sample!r}: expected {num} paths "
                    f"(one per modality {self.modalities}) or 1 side-by-side image"
                )
            out.append((paths, *sample[1:]))
        if not out:
            raise EmptySplitError(
                f"{type(self).__name__}: the {name} split is empty; every split needs at least "
                "one sample"
            )
        return out

    def camera_label(self, sample: Sample) -> int:
        """True camera index of ``sample`` for the camera (SIE) embedding; default: its camid."""
        if self._cam_labels is not None:
            label = self._cam_labels.get((sample[0], sample[3]))
            if label is not None:
                return label
        return int(sample[2])

    @property
    def num_cam_labels(self) -> int:
        """``1 + max(camera_label)`` over all splits: the size a camera embedding needs."""
        samples = list(self.train) + list(self.query) + list(self.gallery)
        return 1 + max(self.camera_label(s) for s in samples)

    def load(self, paths: Sequence[str]) -> list[Image.Image]:
        """The M PIL images of ``paths`` (see :func:`load_modalities`)."""
        return load_modalities(paths, self.modalities)

    def __getitem__(self, index: int) -> dict:
        sample = self.data[index]
        paths, pid, camid, dsetid = sample[:4]
        imgs = self.load(paths)
        if self.transform is not None and self.k_tfm > 1:
            img: Any = [apply_synchronized(self.transform, imgs, self.sync_modalities)
                        for _ in range(self.k_tfm)]
        else:
            img = apply_synchronized(self.transform, imgs, self.sync_modalities)
        return {
            "img": img,
            "pid": pid,
            "camid": camid,
            "cam_label": self.camera_label(sample),
            "impath": tuple(paths),
            "dsetid": dsetid,
        }

    # ------------------------------------------------------------------ combining
    def __add__(self, other: Any) -> MultiModalImageDataset:
        """Add the train sets of two multi-modal datasets, keeping a multi-modal image dataset.

        torchreid's base ``__add__`` would build a ``VideoDataset`` from tuple paths. Like it,
        pids and dsetids of ``other`` are offset by ``self``'s counts; camids by ``1 + max``
        of ``self``'s train camids (never clashing); camera labels are kept per sample and
        offset by ``self.num_cam_labels``.
        """
        if not isinstance(other, MultiModalImageDataset):
            raise TypeError(
                f"cannot add {type(other).__name__} to the multi-modal {type(self).__name__}: "
                "both datasets must be MultiModalImageDataset with the same modalities"
            )
        if len(other.modalities) != len(self.modalities):
            raise DatasetFormatError(
                f"cannot add {type(other).__name__} (modalities {other.modalities}) to "
                f"{type(self).__name__} (modalities {self.modalities})"
            )
        labels = {(s[0], s[3]): self.camera_label(s)
                  for s in [*self.query, *self.gallery, *self.train]}
        offset = self.num_cam_labels
        cam_offset = 1 + max(s[2] for s in self.train)  # no clash with non-contiguous camids
        train = list(self.train)
        for sample in other.train:
            paths, pid, camid, dsetid = sample[:4]
            dsetid += self.num_datasets
            train.append((paths, pid + self.num_train_pids, camid + cam_offset, dsetid))
            labels[(paths, dsetid)] = other.camera_label(sample) + offset
        combined = MultiModalImageDataset(
            train, self.query, self.gallery, transform=self.transform, k_tfm=self.k_tfm,
            mode=self.mode, combineall=False, verbose=False, modalities=self.modalities,
        )
        combined._cam_labels = labels
        return combined

    def __radd__(self, other: Any) -> MultiModalImageDataset:
        """Support ``sum([d1, d2])`` (torchreid's data manager sums its sources)."""
        return self if isinstance(other, int) and other == 0 else self.__add__(other)

    # ------------------------------------------------------------------ summary
    def show_summary(self) -> None:
        """Log the split statistics once (rank 0 only), instead of torchreid's prints."""
        if not is_main_process():
            return
        rows = [
            (name, self.get_num_pids(split), len(split), self.get_num_cams(split))
            for name, split in (("train", self.train), ("query", self.query),
                                ("gallery", self.gallery))
        ]
        table = "\n".join(f"  {n:<8} | {p:5d} | {i:8d} | {c:9d}" for n, p, i, c in rows)
        logger.info(
            "=> Loaded %s (%s)\n  subset   | # ids | # images | # cameras\n%s",
            type(self).__name__, "/".join(self.modalities), table,
        )


# ---------------------------------------------------------------------- folder datasets
def list_images(folder: str) -> list[str]:
    """Sorted file names in ``folder`` ending in one of :data:`IMAGE_EXTENSIONS`."""
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def scan_modality_folders(folder: str, modality_dirs: Sequence[str],
                          modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Path tuples of the images present under ``folder/<modality_dir>/`` (matched by name).

    Every image name must exist in every modality folder; the first missing file raises
    :class:`MissingModalityError` naming the modality and the path (no silent drop).
    """
    listings = []
    for mdir, modality in zip(modality_dirs, modalities):
        path = osp.join(folder, mdir)
        if not osp.isdir(path):
            raise MissingModalityError(
                f"{modality} folder not found: '{path}' (every sample folder needs "
                f"{'/, '.join(modality_dirs)}/)"
            )
        listings.append(set(list_images(path)))
    names = set().union(*listings)
    for listing, mdir, modality in zip(listings, modality_dirs, modalities):
        missing = sorted(names - listing)
        if missing:
            raise MissingModalityError(
                f"{modality} image missing: '{osp.join(folder, mdir, missing[0])}' does not exist "
                f"({len(missing)} file(s) of '{folder}' lack their {modality} image; each image "
                f"name must exist in every modality folder {tuple(modality_dirs)})"
            )
    return [tuple(osp.join(folder, d, n) for d in modality_dirs) for n in sorted(names)]


def relabel_pids(samples: list) -> list:
    """Map the pids of ``samples`` to 0..n-1 in increasing pid order."""
    pid2label = {pid: i for i, pid in enumerate(sorted({s[1] for s in samples}))}
    return [(s[0], pid2label[s[1]], *s[2:]) for s in samples]


class MultiModalFolderDataset(MultiModalImageDataset):
    """A multi-modal dataset read from ``<root>/<dataset_dir>/``; base of the real datasets.

    Subclasses set :attr:`dataset_dir`, implement :meth:`split_dirs` (relative folder of each
    split), :meth:`layout_lines` (the layout shown when the folder is missing) and
    :meth:`build_split` (samples of one folder). A missing folder raises
    :class:`DatasetNotFoundError` that shows the expected layout and how to get the data;
    an empty split raises :class:`EmptySplitError`. ``download=True`` fetches a dataset that
    has a public link (see :mod:`torchreid_sdtps.data.download`) when it is not there yet.
    """

    dataset_dir: str = ""

    def __init__(self, root: str = "", download: bool = False, **kwargs: Any) -> None:
        self.root = osp.abspath(osp.expanduser(root))
        # an instance may name its own folder (the synthetic set: one per spec)
        self.dataset_path = osp.join(self.root, self.dataset_dir)
        if download:
            download_dataset(type(self).dataset_dir, self.root, type(self).has_layout)
        self.check_layout()
        splits = {}
        for name, rel in self.split_dirs().items():
            folder = osp.join(self.dataset_path, rel)
            samples = self.build_split(folder, name)
            if not samples:
                raise EmptySplitError(
                    f"{type(self).__name__}: no {name} image found in '{folder}'. Expected "
                    "layout:\n" + "\n".join(self.layout_lines())
                )
            splits[name] = samples
        super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    @classmethod
    def split_dirs(cls) -> dict[str, str]:
        """``{"train": rel, "query": rel, "gallery": rel}`` relative to the dataset folder."""
        raise NotImplementedError

    @classmethod
    def layout_lines(cls) -> list[str]:
        """Lines describing the expected folder layout (under ``<root>/<dataset_dir>/``)."""
        raise NotImplementedError

    def build_split(self, folder: str, split: str) -> list:
        """Samples ``(paths, pid, camid)`` of one split folder (train pids relabelled)."""
        raise NotImplementedError

    @classmethod
    def has_layout(cls, path: str) -> bool:
        """Whether ``path`` (a candidate dataset folder) holds every split folder."""
        return all(osp.isdir(osp.join(path, rel)) for rel in cls.split_dirs().values())

    def check_layout(self) -> None:
        """Raise :class:`DatasetNotFoundError` (layout + how to get it) if a folder is missing."""
        for rel in dict.fromkeys(self.split_dirs().values()):
            folder = osp.join(self.dataset_path, rel)
            if not osp.isdir(folder):
                raise DatasetNotFoundError(
                    f"{type(self).__name__} not found: folder '{folder}' does not exist "
                    f"(root='{self.root}').\nExpected layout:\n"
                    + "\n".join(self.layout_lines())
                    + f"\nPlace the dataset folder '{type(self).dataset_dir}' directly under the "
                    "root you pass as root= (ImageDataManager(root=...)).\n"
                    + how_to_get(type(self).dataset_dir, self.root)
                )
