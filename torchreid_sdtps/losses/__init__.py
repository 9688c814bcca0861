"""Auxiliary losses of the SDTPS engine (ID and triplet losses come from torchreid)."""
from .alignment import CrossModalAlignmentLoss, pair_similarity
from .gather import GlobalBatchLoss
from .ratio import SelectionRatioLoss

__all__ = ["SelectionRatioLoss", "CrossModalAlignmentLoss", "pair_similarity",
           "GlobalBatchLoss"]
