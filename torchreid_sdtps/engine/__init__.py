"""Engines: the plugin's ``ImageSDTPSEngine`` and torchreid's stock ones (re-exported)."""
from .hooks import EngineHook
from .sdtps_engine import ImageSDTPSEngine
from .stock import ImageSoftmaxEngine, ImageTripletEngine

__all__ = ["EngineHook", "ImageSDTPSEngine", "ImageSoftmaxEngine", "ImageTripletEngine"]
