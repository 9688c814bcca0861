"""Auxiliary losses of the SDTPS engine (ID and hard-margin triplet losses come
from torchreid; DeMo's soft-margin triplet is here)."""
from .alignment import CrossModalAlignmentLoss, pair_similarity
from .gather import GlobalBatchLoss
from .ratio import SelectionRatioLoss
from .triplet import SoftMarginTripletLoss

__all__ = ["SelectionRatioLoss", "CrossModalAlignmentLoss", "pair_similarity",
           "SoftMarginTripletLoss", "GlobalBatchLoss"]
