"""Modality dropout: train for a failed sensor by removing modalities of random samples.

Per training sample, with probability ``prob``, one of the allowed ``subsets`` (named like the
rows of the missing-modality table: ``"RGB"``, ``"NI+TI"``...) is drawn uniformly and those
modalities are removed with :func:`~torchreid_sdtps.utils.modalities.zero_modalities`, the
function the missing-modality evaluation and the extractor use, so training sees exactly what
evaluation and deployment see. A subset naming every modality is refused
(:func:`~torchreid_sdtps.engine.evaluation.parse_setting`), so no sample ever loses all of them.

The draws come from torch's global generator (seeded by ``train.seed``, saved in checkpoints
and restored on resume); ``prob = 0`` draws nothing, so training is then bit-identical to
training without the option.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..choices import MISSING_SETTINGS
from ..errors import ConfigError
from .evaluation import parse_setting

__all__ = ["ModalityDropout", "DEFAULT_DROPOUT_SUBSETS"]

#: every row of the missing-modality table but "none"
DEFAULT_DROPOUT_SUBSETS: tuple[str, ...] = tuple(s for s in MISSING_SETTINGS if s != "none")


class ModalityDropout:
    """Draws which modalities of each sample to remove.

    Args:
        prob: probability that a sample loses modalities, in [0, 1).
        subsets: the allowed removals (missing-table names; default: every row but "none").
        modalities: the data set's modality names, in input order.
    """

    def __init__(self, prob: float, subsets: Sequence[str] | None = None,
                 modalities: Sequence[str] = ("RGB", "NI", "TI")) -> None:
        if not 0.0 <= float(prob) < 1.0:
            raise ConfigError(f"modality dropout probability (train.modality_dropout.prob) must be "
                              f"in [0, 1), got {prob}")
        names = list(DEFAULT_DROPOUT_SUBSETS if subsets is None else subsets)
        if not names:
            raise ConfigError("train.modality_dropout.subsets is empty: name at least one "
                              f"removal, e.g. {list(DEFAULT_DROPOUT_SUBSETS)}")
        self.prob = float(prob)
        self.modalities = tuple(modalities)
        table = torch.zeros(len(names), len(self.modalities), dtype=torch.bool)
        for row, name in enumerate(names):
            try:
                zeroed = parse_setting(str(name), self.modalities)
            except ValueError as exc:
                raise ConfigError(f"train.modality_dropout.subsets: {exc}") from exc
            if not zeroed:
                raise ConfigError(f"train.modality_dropout.subsets: '{name}' removes nothing; "
                                  "name the modalities to remove (the probability already "
                                  "sets how often a sample keeps all of them)")
            table[row, list(zeroed)] = True
        self.subsets = tuple(str(n) for n in names)
        self.table = table  # (S, M): row s = the modalities subset s removes

    @property
    def active(self) -> bool:
        """Whether any sample can lose a modality (``prob > 0``)."""
        return self.prob > 0

    def sample(self, batch: int) -> torch.Tensor:
        """``(batch, M)`` bool: True = remove that modality of that sample (never a full row)."""
        if not self.active:
            return torch.zeros(batch, len(self.modalities), dtype=torch.bool)
        drop = torch.rand(batch) < self.prob
        choice = torch.randint(len(self.subsets), (batch,))
        return self.table[choice] & drop[:, None]

    def __repr__(self) -> str:
        return f"ModalityDropout(prob={self.prob}, subsets={list(self.subsets)})"
