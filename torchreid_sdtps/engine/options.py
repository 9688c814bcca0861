"""``EngineOptions``: every option of the training engine, one typed object.

This dataclass is the one list of the engine's options. Each field names its config key
(torchreid's own key where torchreid has one: ``loss.triplet.margin``, ``use_gpu``...; the
plugin's under ``sdtps.``, ``test.`` and ``train.modality_dropout.``), and the config defaults,
the engine's keyword arguments (``config.engine_kwargs``) and the check that a stock engine
is not given an option it cannot honour (``build.build_engine``) are all read from here.

A new loss weight: a field here (default, key, the value an engine without it honours
anyway), its term in :class:`~torchreid_sdtps.losses.criterion.SDTPSCriterion`, and a test.

Pure Python (no torch), so the config can mirror it without building anything.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..choices import DROPOUT_TRIPLET, HEAD_REDUCTIONS, MISSING_SETTINGS
from ..errors import ConfigError

__all__ = ["EngineOptions", "option"]

_NO_PLAIN = object()


def option(default: Any, key: str, plain: Any = _NO_PLAIN, config: Any = _NO_PLAIN) -> Any:
    """A field of :class:`EngineOptions`: its ``default``, its config ``key``, the ``plain``
    value (what an engine without the option does anyway, so a stock engine accepts it) and
    the ``config`` default where the config's differs from the Python one."""
    meta = {"key": key}
    if plain is not _NO_PLAIN:
        meta["plain"] = plain
    if config is not _NO_PLAIN:
        meta["config"] = config
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Options of :class:`~torchreid_sdtps.engine.ImageSDTPSEngine` (and, those torchreid's
    engines take, of the stock ones); config key in each field's metadata."""

    #: triplet margin (torchreid's); 0 with ``soft_margin``
    margin: float = option(0.3, "loss.triplet.margin")
    #: weight of the triplet term
    weight_t: float = option(1.0, "loss.triplet.weight_t")
    #: weight of the ID (cross-entropy) term
    weight_x: float = option(1.0, "loss.triplet.weight_x")
    use_gpu: bool = option(True, "use_gpu")
    label_smooth: bool = option(True, "loss.softmax.label_smooth")
    #: weight of the selection-ratio loss (zero contribution under top-K)
    weight_ratio: float = option(1.0, "sdtps.weight_ratio", plain=0.0)
    #: weight of the cross-modal alignment loss
    weight_align: float = option(0.5, "sdtps.weight_align", plain=0.0)
    #: weight of the partial-match triplet: the triplet on every M-1 modalities' per-modality
    #: normalised guide blocks (the match a missing modality leaves; issue 25)
    weight_partial: float = option(0.0, "sdtps.weight_partial", plain=0.0)
    #: margin of the alignment ranking loss
    align_margin: float = option(0.2, "sdtps.align_margin")
    #: centre the tokens in the alignment loss
    align_center: bool = option(True, "sdtps.align_center")
    #: mixed precision for training on CUDA (ignored, with a log note, without CUDA)
    use_amp: bool = option(False, "sdtps.use_amp", plain=False, config=True)
    #: DeMo's soft-margin batch-hard triplet instead of torchreid's (``margin`` must be 0)
    soft_margin: bool = option(False, "loss.triplet.soft_margin", plain=False)
    #: several heads: ``"mean"`` of their terms (torchreid) or ``"sum"`` (DeMo)
    head_reduction: str = option("mean", "loss.head_reduction", plain="mean")
    #: also keep the checkpoint with the best test-set mAP (optimistic, off by default)
    best_on_test: bool = option(False, "test.best_on_test", plain=False)
    #: float16 autocast for the evaluation features (CUDA only)
    eval_amp: bool = option(False, "test.amp", plain=False)
    #: probability that a training sample loses modalities (0 = off)
    modality_dropout: float = option(0.0, "train.modality_dropout.prob")
    #: the removals drawn from (missing-table names; None: every row of the table but "none")
    dropout_subsets: list[str] | None = option(
        None, "train.modality_dropout.subsets",
        config=[s for s in MISSING_SETTINGS if s != "none"])
    #: which samples the triplet term ranks under modality dropout: all | complete
    dropout_triplet: str = option("all", "train.modality_dropout.triplet")
    #: first epoch (0-based) whose samples may lose modalities (dropout after a warm-up)
    dropout_start: int = option(0, "train.modality_dropout.start_epoch", plain=0)

    def __post_init__(self) -> None:
        for name in ("weight_t", "weight_x", "weight_ratio", "weight_align", "weight_partial"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.named(name)} {getattr(self, name)}: loss weights "
                                  "must be >= 0")
        for name in ("margin", "align_margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.named(name)} {getattr(self, name)}: must be >= 0")
        if self.soft_margin and self.margin != 0:
            raise ConfigError(f"loss.triplet.soft_margin uses no margin; set loss.triplet.margin 0 "
                              f"(got {self.margin})")
        for name, allowed in (("head_reduction", HEAD_REDUCTIONS),
                              ("dropout_triplet", DROPOUT_TRIPLET)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{self.named(name)} must be one of {list(allowed)}, got "
                                  f"{getattr(self, name)!r}")
        if int(self.dropout_start) < 0:
            raise ConfigError(f"{self.named('dropout_start')} {self.dropout_start}: must be >= 0")
        if not 0.0 <= float(self.modality_dropout) < 1.0:
            raise ConfigError(f"{self.named('modality_dropout')} {self.modality_dropout}: "
                              "must be in [0, 1)")

    # ------------------------------------------------------------------ the one table
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def key(cls, name: str) -> str:
        """The config key of field ``name``."""
        return cls.keys()[name]

    @classmethod
    def named(cls, name: str) -> str:
        """``"weight_align (sdtps.weight_align)"``: the field and its config key, for messages."""
        key = cls.key(name)
        return key if key.rsplit(".", 1)[-1] == name else f"{key} ({name})"

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Field name -> config key."""
        return {f.name: f.metadata["key"] for f in dataclasses.fields(cls)}

    @classmethod
    def plain_values(cls) -> dict[str, Any]:
        """Field name -> the value an engine without the option honours anyway."""
        return {f.name: f.metadata["plain"] for f in dataclasses.fields(cls)
                if "plain" in f.metadata}

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """Config key -> its default (the field's, or its ``config`` one)."""
        out = {}
        for f in dataclasses.fields(cls):
            if "config" in f.metadata:
                value = f.metadata["config"]
            else:
                value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out[f.metadata["key"]] = list(value) if isinstance(value, list) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> EngineOptions:
        """The options ``d`` names (the rest at their defaults); an unknown name raises
        :class:`ConfigError` listing the options."""
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown engine option(s) {unknown}{where}; the options are "
                              f"{list(cls.field_names())}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EngineOptions:
        """A copy with ``changes`` (unknown names raise like :meth:`from_dict`)."""
        return type(self).from_dict({**self.to_dict(), **changes})
