"""``SDTPSCriterion``: the training loss of an SDTPS model from its outputs, in one place.

loss = ``weight_t``·triplet + ``weight_x``·ID (label-smoothed CE; both torchreid's, or DeMo's
soft-margin triplet) + ``weight_ratio``·:class:`SelectionRatioLoss` +
``weight_align``·:class:`CrossModalAlignmentLoss` + ``weight_partial``·partial-match triplet
(:meth:`SDTPSCriterion.partial`: the triplet on the per-modality normalised guide blocks of
every ``M - 1`` modalities, the match a missing modality leaves at evaluation); a term of weight
0 is not computed. The summary holds each computed term (``loss_t``, ``loss_x``, ``loss_ratio``,
``loss_align``, ``loss_partial``) and
the ID accuracy ``acc``, the names torchreid's printed lines and tensorboard scalars show.

With several heads (lists of logits / features), ``head_reduction`` ``"mean"`` averages their
terms (torchreid's ``DeepSupervision``), ``"sum"`` adds them (DeMo). Under modality dropout
(``present``: ``(B, M)`` bool, True = the modality is there), the alignment loss leaves out
pairs with an absent modality and ``dropout_triplet="complete"`` ranks only the complete samples.

Under DDP, :meth:`SDTPSCriterion.global_batch` makes the batch-mining terms (triplet,
alignment) mine over every rank's samples (:class:`GlobalBatchLoss`).
"""
from __future__ import annotations

from typing import Any

import torch

from .. import compat
from .alignment import CrossModalAlignmentLoss
from .gather import GlobalBatchLoss
from .ratio import SelectionRatioLoss
from .triplet import SoftMarginTripletLoss

__all__ = ["SDTPSCriterion"]


def _float(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_float(v) for v in x)
    return x


class SDTPSCriterion:
    """Model outputs -> ``(loss, summary)`` (see the module doc).

    Args:
        options: an :class:`~torchreid_sdtps.engine.options.EngineOptions` (read: the loss
            weights, ``margin``, ``soft_margin``, ``label_smooth``, ``align_margin``,
            ``align_center``, ``head_reduction``, ``dropout_triplet``).
        num_classes: training identities (the ID term's classes).
        use_gpu: the labels go to CUDA (torchreid's cross-entropy moves them).
    """

    def __init__(self, options: Any, num_classes: int, use_gpu: bool = False) -> None:
        self.options = options
        losses = compat.losses()
        self.triplet: Any = (SoftMarginTripletLoss() if options.soft_margin
                             else losses.TripletLoss(margin=options.margin))
        self.xent = losses.CrossEntropyLoss(num_classes=num_classes, use_gpu=use_gpu,
                                            label_smooth=options.label_smooth)
        self.ratio = SelectionRatioLoss()
        self.align: Any = CrossModalAlignmentLoss(margin=options.align_margin,
                                                  center=options.align_center)

    def global_batch(self) -> SDTPSCriterion:
        """Mine the triplet and alignment terms over the batch of all ranks (DDP); returns self."""
        if not isinstance(self.triplet, GlobalBatchLoss):
            self.triplet = GlobalBatchLoss(self.triplet)
        if not isinstance(self.align, GlobalBatchLoss):
            self.align = GlobalBatchLoss(self.align)
        return self

    def head_loss(self, criterion: Any, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """``criterion`` over one head, or over several reduced by ``head_reduction``."""
        if not isinstance(outputs, (list, tuple)):
            return criterion(outputs, targets)
        total = sum(criterion(out, targets) for out in outputs)
        return total if self.options.head_reduction == "sum" else total / len(outputs)

    def __call__(self, outputs: Any, pids: torch.Tensor, present: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """``outputs``: the model's training return ``((logits, features), aux)`` (built with
        ``loss='triplet'``, called with ``return_aux=True``)."""
        out, aux = outputs
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("ImageSDTPSEngine needs the model built with loss='triplet' "
                             "(outputs (logits, features) in training)")
        logits, features = _float(out[0]), _float(out[1])
        opts = self.options
        loss = torch.zeros((), device=pids.device)
        summary: dict[str, float] = {}
        if opts.weight_t > 0:
            loss_t = self._triplet(features, pids, present)
            loss = loss + opts.weight_t * loss_t
            summary["loss_t"] = loss_t.item()
        if opts.weight_x > 0:
            loss_x = self.head_loss(self.xent, logits, pids)
            loss = loss + opts.weight_x * loss_x
            summary["loss_x"] = loss_x.item()
            summary["acc"] = compat.metrics().accuracy(logits, pids)[0].item()
        if opts.weight_ratio > 0:
            loss_r = self.ratio(aux.get("soft_masks"), ratio=aux.get("ratio"))
            loss = loss + opts.weight_ratio * loss_r.to(loss.device)
            summary["loss_ratio"] = loss_r.item()
        if opts.weight_align > 0:
            loss_a = self.align(aux["tokens"], pids, present)
            loss = loss + opts.weight_align * loss_a
            summary["loss_align"] = loss_a.item()
        if opts.weight_partial > 0:
            loss_p = self.partial(aux["global"], pids, present)
            loss = loss + opts.weight_partial * loss_p
            summary["loss_partial"] = loss_p.item()
        return loss, summary

    def partial(self, glob: torch.Tensor, pids: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """Mean triplet term over the ``M`` subsets of ``M - 1`` modalities of ``glob (B, M, C)``
        (the guides), each subset's feature being its L2-normalised blocks scaled by
        ``1/sqrt(M - 1)``: exactly the ranking feature of ``missing_match present`` with one
        modality absent. Under modality dropout only complete samples take part."""
        if glob.dim() != 3 or glob.shape[1] < 2:
            raise ValueError("partial-match triplet: needs the guides (B, M, C) with M >= 2, got "
                             f"{tuple(glob.shape)}")
        if present is not None:
            full = present.all(dim=1).to(glob.device)
            glob, pids = glob[full], pids[full.to(pids.device)]
            if len(pids) < 2:  # nothing to rank in this batch
                return glob.new_zeros(())
        b, m, _ = glob.shape
        unit = torch.nn.functional.normalize(_float(glob), dim=-1) / (m - 1) ** 0.5
        subsets = [[k for k in range(m) if k != drop] for drop in range(m)]
        return sum(self.triplet(unit[:, keep].flatten(1), pids) for keep in subsets) / m

    def _triplet(self, features: Any, pids: torch.Tensor,
                 present: torch.Tensor | None) -> torch.Tensor:
        """The triplet term; with ``dropout_triplet="complete"`` over the complete samples."""
        if present is None or self.options.dropout_triplet == "all":
            return self.head_loss(self.triplet, features, pids)
        full = present.all(dim=1).to(pids.device)
        if int(full.sum()) < 2:  # nothing to rank in this batch
            return pids.new_zeros((), dtype=torch.float32)
        if isinstance(features, (list, tuple)):
            features = type(features)(f[full] for f in features)
        else:
            features = features[full]
        return self.head_loss(self.triplet, features, pids[full])
