"""Analysis metrics beyond ranking: token-selection recall / precision (``selection``)."""
from .selection import evaluate_selection, format_selection, selection_scores

__all__ = ["evaluate_selection", "format_selection", "selection_scores"]
