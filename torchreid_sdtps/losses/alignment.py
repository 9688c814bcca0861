"""Cross-modal alignment loss: SEPS's HRPA ranking loss adapted to pairs of modalities.

For every unordered pair of modalities (a, b), a != b, and every pair of samples (i, j) the
token sets ``T_a[i]`` and ``T_b[j]`` (enhanced tokens, ``(T, C)`` each) are compared by a
bidirectional max-mean similarity on L2-normalised tokens::

    A    = LeakyReLU_0.1( norm(T_a[i]) @ norm(T_b[j])^T )          # (T, T)
    S_ij = mean_r max_c A  +  mean_c max_r A

Ranking is VSE++/HRPA style with identity labels: for an anchor i in modality a, every j in
modality b with the same pid is a positive (j == i, the same sample seen by the other sensor,
included), the hardest negative is the most similar j of another pid, and
``relu(margin - S_ij + S_i,hardneg)`` is averaged over all positive pairs. The same is done
with anchors in modality b (columns of S), so both directions of each pair count.

Centring (``center=True``, the default): before the L2 normalisation the mean token of each
modality over the batch (all samples and tokens) is subtracted. Without it the loss has a
degenerate minimum that training finds within an epoch: a large component shared by every
token makes every cosine ~1, so ``S_ij -> 2`` for all pairs and the loss sits at ``margin``
(below its value at initialisation) while carrying no identity information. Measured on the
synthetic demo (sdtps_vit_tiny, 15 epochs): mean token cosine to the batch mean 0.999,
``S_pos - S_neg = 0.0014``. A shared offset cannot change centred tokens, so that shortcut is
gone; ``center=False`` gives the literal formula above.

Absent modalities (``present (B, M)`` bool, e.g. from the training modality dropout): a pair
(i in modality a, j in modality b) counts only when both are present. Such pairs are neither
positives nor candidate hardest negatives, the centring mean of a modality is taken over the
samples where it is present, and the loss is averaged over the remaining positive pairs (0,
with a gradient of 0, when none remains). A blank image's tokens are thus never pulled toward,
or pushed from, a real image's.

Everything is one ``einsum`` over all modality pairs at once (no per-pair code). Cost per
modality pair: O(B^2 * T^2 * C) multiply-adds and B^2 * T^2 floats of memory for A (T is
N_c + 1 enhanced tokens); e.g. B=64, T=27, C=512 gives ~1.5 GFLOP and 3 M floats per pair.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossModalAlignmentLoss", "pair_similarity"]


def pair_similarity(tokens: torch.Tensor, negative_slope: float = 0.1,
                    center: bool = False, present: torch.Tensor | None = None) -> torch.Tensor:
    """Max-mean similarity ``S (P, B, B)`` for all P = M(M-1)/2 modality pairs (a < b).

    ``S[p, i, j]`` compares sample i in modality a_p with sample j in modality b_p;
    ``center`` first removes each modality's mean token over the batch (over the samples
    where ``present (B, M)`` is True, when given).
    """
    _, m, _, _ = tokens.shape
    ia, ib = torch.triu_indices(m, m, offset=1, device=tokens.device)
    t = tokens.float()
    if center and present is None:
        t = t - t.mean(dim=(0, 2), keepdim=True)
    elif center:
        w = present.to(t.dtype)[:, :, None, None]  # (B, M, 1, 1)
        mean = (t.mean(dim=2, keepdim=True) * w).sum(0, keepdim=True) / w.sum(0, keepdim=True).clamp_min(1.0)
        t = t - mean
    t = F.normalize(t, dim=-1)
    # (P, B, B, T, T): rows = tokens of T_a[i], columns = tokens of T_b[j]
    a = torch.einsum("ipxc,jpyc->pijxy", t[:, ia], t[:, ib])
    a = F.leaky_relu(a, negative_slope)
    return a.amax(dim=-1).mean(dim=-1) + a.amax(dim=-2).mean(dim=-1)


class CrossModalAlignmentLoss(nn.Module):
    """Hinge ranking loss (margin) on cross-modal token-set similarities, hardest negative.

    Args:
        margin: ranking margin between a positive pair and the hardest negative.
        center: remove each modality's batch-mean token first (see the module doc).
    """

    def __init__(self, margin: float = 0.2, center: bool = True) -> None:
        super().__init__()
        self.margin = float(margin)
        self.center = bool(center)

    def forward(self, tokens: torch.Tensor, pids: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens (B, M, T, C)`` enhanced tokens, ``pids (B,)`` identity labels, ``present
        (B, M)`` bool or None (every modality present; see the module doc)."""
        if tokens.dim() != 4:
            raise ValueError("CrossModalAlignmentLoss: tokens must be (B, M, T, C), got shape "
                             f"{tuple(tokens.shape)}")
        b, m = tokens.shape[:2]
        if m < 2:
            raise ValueError(f"CrossModalAlignmentLoss: needs >= 2 modalities, got M={m}")
        if pids.shape != (b,):
            raise ValueError(f"CrossModalAlignmentLoss: pids must be ({b},) to match tokens, "
                             f"got {tuple(pids.shape)}")
        pids = pids.to(tokens.device)
        pos = pids[:, None] == pids[None, :]                     # (B, B), diagonal included
        if bool(pos.all()):  # no negative in the batch: nothing to rank against
            return tokens.sum() * 0.0
        if present is not None:
            if present.shape != (b, m):
                raise ValueError(f"CrossModalAlignmentLoss: present must be ({b}, {m}), got "
                                 f"{tuple(present.shape)}")
            return self._masked(tokens, pos, present.to(tokens.device, torch.bool))
        s = pair_similarity(tokens, center=self.center)           # (P, B, B)
        s = torch.cat([s, s.transpose(1, 2)], dim=0)              # both anchor directions
        hard_neg = s.masked_fill(pos, float("-inf")).amax(dim=-1, keepdim=True)
        # rows whose pid fills the batch have no negative: -inf -> no loss
        hinge = F.relu(self.margin - s + hard_neg).masked_fill(~pos, 0.0)
        return hinge.sum() / (pos.sum() * s.shape[0])

    def _masked(self, tokens: torch.Tensor, pos: torch.Tensor, present: torch.Tensor
                ) -> torch.Tensor:
        """The loss with absent modalities left out of every pair (see the module doc)."""
        m = tokens.shape[1]
        ia, ib = torch.triu_indices(m, m, offset=1, device=tokens.device)
        s = pair_similarity(tokens, center=self.center, present=present)  # (P, B, B)
        valid = present[:, ia].T[:, :, None] & present[:, ib].T[:, None, :]  # (P, B, B)
        s = torch.cat([s, s.transpose(1, 2)], dim=0)               # both anchor directions
        valid = torch.cat([valid, valid.transpose(1, 2)], dim=0)
        positive, negative = pos & valid, ~pos & valid
        hard_neg = s.masked_fill(~negative, float("-inf")).amax(dim=-1, keepdim=True)
        # no negative left for an anchor: -inf -> no loss for its rows
        hinge = F.relu(self.margin - s + hard_neg).masked_fill(~positive, 0.0)
        return hinge.sum() / positive.sum().clamp_min(1)
