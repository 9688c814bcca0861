"""Multi-modal datasets: the base class, RGBNT201, RGBNT100, MSVR310 and their errors.

``synthetic`` (the generated test-bed dataset) is registered through the entry points and is
not exported here.
"""
from __future__ import annotations

from .msvr310 import MSVR310
from .multimodal import (
    DatasetFormatError,
    DatasetNotFoundError,
    EmptySplitError,
    ImageReadError,
    MissingModalityError,
    MultiModalFolderDataset,
    MultiModalImageDataset,
    read_image,
)
from .rgbnt100 import RGBNT100
from .rgbnt201 import RGBNT201

__all__ = ["DatasetFormatError", "DatasetNotFoundError", "EmptySplitError", "ImageReadError",
           "MSVR310", "MissingModalityError", "MultiModalFolderDataset",
           "MultiModalImageDataset", "RGBNT100", "RGBNT201", "read_image"]
