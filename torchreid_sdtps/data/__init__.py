"""Multi-modal datasets: the base class, RGBNT201, RGBNT100, MSVR310 and their errors.

``synthetic`` (the generated test-bed dataset) is registered through the entry points and is
not exported here. Names are resolved lazily (PEP 562), so importing a light submodule (e.g.
the synthetic spec, which the config reads) does not import the data sets.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "MultiModalImageDataset": "multimodal", "MultiModalFolderDataset": "multimodal",
    "read_image": "multimodal", "ImageReadError": "multimodal",
    "MissingModalityError": "multimodal", "DatasetNotFoundError": "multimodal",
    "EmptySplitError": "multimodal", "DatasetFormatError": "multimodal",
    "RGBNT201": "rgbnt201", "RGBNT100": "rgbnt100", "MSVR310": "msvr310",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
