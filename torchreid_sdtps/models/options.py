"""``SDTPSOptions``: every design option of an SDTPS model, one typed object.

The route from the configuration to the model is one name all the way: the ``sdtps`` config node
has one key per field (plus the engine's name and some ``EngineOptions`` keys),
``config.model_options`` turns it into an ``SDTPSOptions``, the ``sdtps_*`` factories pass it
to ``SDTPSNet``, which gives each field to the part that uses it under the same name (``ratio`` -> ``SDTPS(ratio=...)``,
``drop_path`` -> the backbone's stochastic depth, ``sie_coe`` -> its camera embedding).

Pure Python (no torch), so the config can mirror it without importing a model.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..choices import (
    HEADS,
    MISSING_MATCHES,
    NECK_FEATS,
    ORI_HEADS,
    SELECTIONS,
    TEST_FEATURES,
    refuse_removed_stages,
)
from ..errors import ConfigError

__all__ = ["SDTPSOptions", "as_options"]

@dataclasses.dataclass(frozen=True)
class SDTPSOptions:
    """Design options of ``SDTPSNet`` (DESIGN §4); config key ``sdtps.<field>``."""

    #: local backbone weight file; overrides the factory's ``pretrained`` ("" = use it)
    backbone_weights: str = ""
    #: SIE camera embedding sized from the data sets' camera labels (False: none)
    sie_camera: bool = True
    #: weight of the SIE camera embedding (TransReID 3.0, DeMo 1.0)
    sie_coe: float = 3.0
    #: ViT patch size in pixels; None = the backbone variant's (16). Another value changes the
    #: patch grid (N) and needs random init (pretrained weights have the variant's patch size)
    patch_size: int | None = None
    #: stochastic depth of the backbone blocks (timm's ``drop_path_rate``); None = the backbone
    #: variant's DeMo value (0 for CLIP, which DeMo never gives MODEL.DROP_PATH; 0.1 for ImageNet)
    drop_path: float | None = None
    #: evaluation feature: one of ``choices.TEST_FEATURES``
    test_feature: str = "concat"
    #: evaluation feature after | before the BNNeck BatchNorm
    neck_feat: str = "after"
    #: ``concat`` (DeMo DIRECT=1) | ``per_modality`` (DIRECT=0) classifier on the [CLS] tokens
    ori_head: str = "concat"
    #: token-branch head (``models/heads.py``): one of ``choices.HEADS``; "mean" = the seed
    #: review's mean of [V̂, e] (kept by the fusion study's rules), "refine" = the guide refined
    #: by a cross-attention over [V̂, e], "residual" = the guide plus a zero-initialised correction
    head: str = "mean"
    #: False: the ablation baseline without SDTPS (backbone, guide and ``ori`` head only)
    use_sdtps: bool = True
    #: rho: kept fraction of patches (``SDTPS.ratio``)
    ratio: float = 0.5
    #: alpha: N_c = round(N * ratio * aggr_ratio)
    aggr_ratio: float = 0.4
    #: explicit N_c (None = from aggr_ratio)
    num_aggr: int | None = None
    #: weight of the score term of SDTPS
    beta: float = 0.25
    #: training selection: one of ``choices.SELECTIONS`` (evaluation is always top-K)
    selection: str = "topk"
    gumbel_noise: float = 0.1
    gumbel_tau: float = 0.1
    score_grad: bool = False
    #: straight-through relaxation whose threshold carries gradient, so the soft mask depends on
    #: score differences only (``ste``/``gumbel``; models/sdtps.py ``select_tokens``)
    shift_invariant: bool = False
    #: an all-zero modality input is absent: out of the cross-modal scores, its features 0
    mask_missing: bool = False
    #: ranking feature: ``plain`` | ``present`` (per-modality normalised blocks, absent ones
    #: left out of the match; ``models.missing.presence_match_feature``)
    missing_match: str = "plain"
    #: learned stand-ins for an absent modality's features (needs ``mask_missing``)
    missing_standin: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("test_feature", TEST_FEATURES), ("neck_feat", NECK_FEATS),
                              ("ori_head", ORI_HEADS), ("selection", SELECTIONS),
                              ("head", HEADS), ("missing_match", MISSING_MATCHES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"sdtps.{name} must be one of {list(allowed)}, got "
                                  f"{getattr(self, name)!r}")
        checks = (("ratio", 0 < self.ratio <= 1, "in (0, 1]"),
                  ("aggr_ratio", self.aggr_ratio > 0, "> 0"),
                  ("num_aggr", self.num_aggr is None or int(self.num_aggr) >= 1, ">= 1 or None"),
                  ("beta", 0 <= self.beta <= 0.5, "in [0, 0.5] (every score weight >= 0)"),
                  ("gumbel_tau", self.gumbel_tau > 0, "> 0"),
                  ("gumbel_noise", self.gumbel_noise >= 0, ">= 0"),
                  ("drop_path", self.drop_path is None or 0 <= self.drop_path < 1,
                   "in [0, 1) or None"),
                  ("sie_coe", self.sie_coe >= 0, ">= 0"),
                  ("patch_size", self.patch_size is None or int(self.patch_size) >= 1,
                   ">= 1 or None"))
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"sdtps.{name}={getattr(self, name)!r}: expected {expected}")
        if self.shift_invariant and self.selection == "topk":
            raise ConfigError("sdtps.shift_invariant shapes the straight-through soft mask, which "
                              "sdtps.selection topk does not have; use ste or gumbel")
        if self.missing_standin and not self.mask_missing:
            raise ConfigError("sdtps.missing_standin needs sdtps.mask_missing True (the stand-in "
                              "replaces the features of a modality the model sees as absent)")
        if not self.use_sdtps and self.test_feature == "sdtps":
            raise ConfigError("sdtps.test_feature='sdtps' needs sdtps.use_sdtps True; the model "
                              "without SDTPS has only the 'ori' feature")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> SDTPSOptions:
        """The options ``d`` names (the rest at their defaults); an unknown name raises
        :class:`ConfigError` naming it (HDM/ATM/MoE ones saying why)."""
        refuse_removed_stages(sorted(map(str, d)), "option", where or " of SDTPSNet")
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown SDTPS model option(s) {unknown}{where}; the options are "
                              f"{list(cls.field_names())} (config node 'sdtps')")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> SDTPSOptions:
        """A copy with ``changes`` (unknown names raise like :meth:`from_dict`)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_options(options: SDTPSOptions | Mapping[str, Any] | None = None,
               **changes: Any) -> SDTPSOptions:
    """``options`` (an ``SDTPSOptions``, a mapping of its fields or None for the defaults) with
    ``changes`` applied; unknown names raise :class:`ConfigError`."""
    if options is None:
        base = SDTPSOptions()
    elif isinstance(options, SDTPSOptions):
        base = options
    elif isinstance(options, Mapping):
        base = SDTPSOptions.from_dict(options)
    else:
        raise ConfigError(f"options: expected SDTPSOptions or a mapping of its fields, got "
                          f"{type(options).__name__}")
    return base.replace(**changes) if changes else base
