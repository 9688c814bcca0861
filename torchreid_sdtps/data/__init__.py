"""Multi-modal datasets: the base class, RGBNT201, RGBNT100, MSVR310 and their errors.

``synthetic`` (the generated test-bed dataset) is registered through the entry points and is
not imported here.
"""
from .msvr310 import MSVR310
from .multimodal import (DatasetFormatError, DatasetNotFoundError, EmptySplitError,
                         ImageReadError, MissingModalityError, MultiModalFolderDataset,
                         MultiModalImageDataset, read_image)
from .rgbnt100 import RGBNT100
from .rgbnt201 import RGBNT201

__all__ = [
    "MultiModalImageDataset", "MultiModalFolderDataset", "RGBNT201", "RGBNT100", "MSVR310",
    "read_image", "ImageReadError", "MissingModalityError", "DatasetNotFoundError",
    "EmptySplitError", "DatasetFormatError",
]
