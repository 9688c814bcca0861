"""Download of the public multi-modal ReID datasets (only when a user asks: ``download=True``).

Sources: the Google Drive links published in the DeMo README (github.com/924973292/DeMo,
"Reproduction / Datasets"; the same links appear in the READMEs of TOP-ReID, ICPL-ReID and
others): RGBNT201 is a Drive *folder*, MSVR310 a Drive *file* (an archive). RGBNT100 is only
published on Baidu Pan, so it cannot be fetched automatically.

Nothing here runs on import and ``gdown`` is imported only inside :func:`download_dataset`.
The data is downloaded and extracted inside a temporary folder under ``root`` and moved to
``<root>/<dataset_dir>`` with one rename, so an interrupted download leaves no half dataset.
"""
from __future__ import annotations

import importlib
import logging
import os
import os.path as osp
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SDTPSError


class DownloadError(SDTPSError, RuntimeError):
    """A data set cannot be downloaded (no automatic source, network, archive); the message
    says where to get it by hand."""


__all__ = ["DownloadError", "DriveSource", "DRIVE_SOURCES", "MANUAL_SOURCES", "how_to_get",
           "download_dataset",
           "extract_archive"]

logger = logging.getLogger(__name__)

ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class DriveSource:
    """A dataset published on Google Drive."""

    drive_id: str
    is_folder: bool

    @property
    def url(self) -> str:
        """The human-readable Drive link."""
        if self.is_folder:
            return f"https://drive.google.com/drive/folders/{self.drive_id}"
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


# Links from the DeMo README (924973292/DeMo, section "Reproduction / Datasets").
DRIVE_SOURCES: dict[str, DriveSource] = {
    "RGBNT201": DriveSource("1EscBadX-wMAT56_It5lXY-S3-b5nK1wH", is_folder=True),
    "MSVR310": DriveSource("1IxI-fGiluPO_Ies6YjDHeTEuVYhFdYwD", is_folder=False),
}

# Datasets without a Drive link: where a user gets them by hand (same README).
MANUAL_SOURCES: dict[str, str] = {
    "RGBNT100": "Baidu Pan https://pan.baidu.com/s/1xqqh7N4Lctm3RcUdskG0Ug (extraction code: rjin), "
                "as listed in the DeMo / TOP-ReID READMEs",
}


def how_to_get(dataset_dir: str, root: str) -> str:
    """One or two sentences telling a user how to obtain ``dataset_dir`` under ``root``."""
    if dataset_dir in DRIVE_SOURCES:
        url = DRIVE_SOURCES[dataset_dir].url
        return (f"To get it: pass download=True (downloads from Google Drive {url} and extracts "
                f"it into '{root}'), or download it by hand from {url} and extract it into "
                f"'{root}'.")
    if dataset_dir in MANUAL_SOURCES:
        return (f"It has no automatic download: get it from {MANUAL_SOURCES[dataset_dir]} and "
                f"extract it into '{root}'.")
    return f"No public download source is known for '{dataset_dir}'."


def _gdown() -> Any:
    try:
        return importlib.import_module("gdown")
    except ImportError as exc:  # pragma: no cover - gdown is a dependency
        raise ImportError("download=True needs the 'gdown' package: pip install gdown") from exc


def _safe_members_zip(zf: zipfile.ZipFile, dest: str) -> None:
    base = osp.realpath(dest)
    for name in zf.namelist():
        target = osp.realpath(osp.join(dest, name))
        if target != base and not target.startswith(base + os.sep):
            raise DownloadError(f"archive member '{name}' would be written outside '{dest}'")


def extract_archive(path: str, dest: str) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) archive into ``dest``; refuse paths leaving it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            _safe_members_zip(zf, dest)
            zf.extractall(dest)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tf.extractall(dest)
    else:
        raise DownloadError(
            f"'{path}' is not a zip or tar archive; extract it by hand (e.g. with unrar or 7z)"
        )


def _find_dataset(folder: str, is_complete: Callable[[str], bool]) -> str | None:
    for current, dirs, _ in os.walk(folder):
        if is_complete(current):
            return current
        dirs.sort()
    return None


def _fetch(source: DriveSource, dataset_dir: str, dest: str) -> list[str]:
    """Download the Drive file or folder of ``source`` into ``dest``; return the local files."""
    gdown = _gdown()
    if not source.is_folder:
        out = gdown.download(id=source.drive_id, output=dest + os.sep, quiet=False)
        if not out or not osp.isfile(out):
            raise DownloadError(f"gdown could not download {source.url}")
        return [out]
    entries = gdown.download_folder(id=source.drive_id, output=dest, quiet=False,
                                    skip_download=True)
    if not entries:
        raise DownloadError(f"gdown found no file in the Drive folder {source.url}")
    # the folder also holds other datasets: keep the entries that name this one, if any do
    wanted = [e for e in entries if dataset_dir.lower() in e.path.lower()] or list(entries)
    files = []
    for entry in wanted:
        os.makedirs(osp.dirname(entry.local_path) or dest, exist_ok=True)
        out = gdown.download(id=entry.id, output=entry.local_path, quiet=False)
        if not out or not osp.isfile(out):
            raise DownloadError(f"gdown could not download '{entry.path}' from {source.url}")
        files.append(out)
    return files


def download_dataset(dataset_dir: str, root: str, is_complete: Callable[[str], bool]) -> str:
    """Make sure ``<root>/<dataset_dir>`` exists, downloading it from Google Drive if needed.

    ``is_complete(path)`` tells whether a folder has the dataset's layout; it is used to skip
    an existing dataset and to find the dataset folder inside the extracted archive(s). Returns
    the dataset folder. Archives that cannot be extracted are kept under ``root`` and named in
    the error, so a long download is not lost.
    """
    target = osp.join(root, dataset_dir)
    if is_complete(target):
        return target
    if dataset_dir not in DRIVE_SOURCES:
        raise DownloadError(f"download=True: {dataset_dir} cannot be downloaded automatically. "
                           + how_to_get(dataset_dir, root))
    if osp.exists(target) and os.listdir(target):
        raise DownloadError(
            f"'{target}' exists but does not have the {dataset_dir} layout; remove or fix it "
            "before download=True (it is never overwritten)"
        )
    source = DRIVE_SOURCES[dataset_dir]
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{dataset_dir}.download-", dir=root)
    try:
        logger.info("downloading %s from %s into %s", dataset_dir, source.url, root)
        try:
            files = _fetch(source, dataset_dir, osp.join(tmp, "download"))
        except Exception as exc:  # gdown raises its own types (quota, permission, network)
            raise DownloadError(
                f"downloading {dataset_dir} failed ({type(exc).__name__}: {exc}). "
                f"Download it by hand from {source.url} and extract it into '{root}'."
            ) from exc
        found = _find_dataset(osp.join(tmp, "download"), is_complete)
        extracted = osp.join(tmp, "extracted")
        for round_ in range(2):  # archives may hold archives (a zip of zips)
            if found is not None:
                break
            for i, path in enumerate(files):
                try:
                    extract_archive(path, osp.join(extracted, f"{round_}-{i}"))
                except DownloadError as exc:
                    kept = osp.join(root, osp.basename(path))
                    os.replace(path, kept)
                    raise DownloadError(
                        f"downloaded {dataset_dir} archive kept as '{kept}': {exc}; extract it "
                        f"so that '{target}' has the expected layout"
                    ) from exc
            found = _find_dataset(extracted, is_complete)
            files = [osp.join(d, n) for d, _, names in os.walk(extracted) for n in sorted(names)
                     if n.lower().endswith(ARCHIVE_EXTENSIONS)]
        if found is None:
            raise DownloadError(
                f"the download from {source.url} holds no folder with the {dataset_dir} layout"
            )
        if osp.isdir(target):
            os.rmdir(target)  # empty (checked above)
        os.replace(found, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s is ready in %s", dataset_dir, target)
    return target
