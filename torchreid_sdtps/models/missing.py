"""Missing modalities in the model: a presence-aware match and a learned stand-in (issue 25).

An absent modality is an all-zero normalised image
(:func:`~torchreid_sdtps.utils.modalities.zero_modalities`); the model detects it in its
forward pass (:func:`~torchreid_sdtps.utils.modalities.present_modalities`), so training,
evaluation, the feature extractor and the exported ONNX graph treat it the same way.

* :func:`presence_match_feature` (option ``sdtps.missing_match "present"``): the ranking
  feature is cut into its per-modality blocks (``[ori_m, sdtps_m]`` of modality m), each block
  L2-normalised, absent blocks set to 0 and the whole scaled by ``1/sqrt(n_present)``. Then
  for two such features ``q``, ``g``::

      |q - g|^2 = 2 - 2 * sum_{m present in both} cos(q_m, g_m) / sqrt(n_q * n_g)

  i.e. the match runs over the blocks *both* sides have, each modality with the same weight,
  normalised over the available modalities (ProxyTTT / MDReID style): with the same present
  set on both sides it is ``2 - 2 * mean_m cos``; a block one side lacks adds nothing (its
  cross term is 0 and every feature has norm 1), so no distance is ever taken against a zero
  block. Plain Euclidean or cosine search (exact, FAISS) computes this match unchanged.
* :class:`MissingStandIn` (option ``sdtps.missing_standin``): learned per-modality vectors
  that replace an absent modality's ``ori`` and ``sdtps`` features before the BNNecks
  (MDReID's modality tokens, here one per modality and feature): the classifiers and the
  batch statistics of training with modality dropout see a learned placeholder instead of
  a zero block. The match above still leaves the absent block out.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..choices import MISSING_MATCHES

__all__ = ["MISSING_MATCHES", "presence_match_feature", "fill_absent", "MissingStandIn"]


def presence_match_feature(feature: torch.Tensor, present: torch.Tensor,
                           dim: int) -> torch.Tensor:
    """The ranking feature ``(B, P*M*dim)`` (P pieces, e.g. ``[ori, sdtps]``, each
    modality-major ``M*dim``) with every modality's block ``[piece_p[m]]_p`` L2-normalised,
    absent blocks 0 and the whole scaled by ``1/sqrt(n_present)`` (unit norm)."""
    b, m = present.shape
    if feature.dim() != 2 or feature.shape[1] % (m * dim):
        raise ValueError(f"presence match: feature of shape {tuple(feature.shape)} is not "
                         f"(B, P*{m}*{dim}) for {m} modalities of width {dim}")
    blocks = feature.reshape(b, -1, m, dim)  # (B, P, M, C)
    norm = blocks.square().sum(dim=(1, 3), keepdim=True).clamp_min(1e-12).sqrt()  # (B,1,M,1)
    keep = present.to(feature.dtype)  # (B, M)
    scale = keep / keep.sum(dim=1, keepdim=True).clamp_min(1.0).sqrt()  # 1/sqrt(n) or 0
    return (blocks / norm * scale[:, None, :, None]).reshape(b, -1)


def fill_absent(x: torch.Tensor, present: torch.Tensor | None,
                standin: torch.Tensor | None = None) -> torch.Tensor:
    """``x (B, M, C)`` with the rows of absent modalities replaced by ``standin (M, C)`` (a
    learned placeholder) or 0; ``present`` None = all present (``x`` unchanged)."""
    if present is None:
        return x
    keep = present[:, :, None]
    fill = torch.zeros((), dtype=x.dtype, device=x.device) if standin is None else standin
    return torch.where(keep, x, fill.to(x.dtype))


class MissingStandIn(nn.Module):
    """Learned stand-ins ``ori (M, C)`` and ``sdtps (M, C)`` for an absent modality's
    features (zero-initialised: an untrained stand-in is the zero fill)."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.ori = nn.Parameter(torch.zeros(num_modalities, dim))
        self.sdtps = nn.Parameter(torch.zeros(num_modalities, dim))

    def extra_repr(self) -> str:
        return f"num_modalities={self.ori.shape[0]}, dim={self.ori.shape[1]}"

