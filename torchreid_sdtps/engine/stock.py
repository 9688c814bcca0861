"""torchreid's stock engines, re-exported so entry points can name them in either layout."""
from __future__ import annotations

from .. import compat

ImageSoftmaxEngine = compat.engine().ImageSoftmaxEngine
ImageTripletEngine = compat.engine().ImageTripletEngine

__all__ = ["ImageSoftmaxEngine", "ImageTripletEngine"]
