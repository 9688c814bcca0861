"""Names the project accepts or refuses, defined once for the config, the models and the engine.

Light on purpose (no torch): :mod:`torchreid_sdtps.config` validates against these without
importing a model or data set module.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["MODALITIES", "SELECTIONS", "HEADS", "TEST_FEATURES", "NECK_FEATS", "ORI_HEADS", "HEAD_REDUCTIONS",
           "TRANSFORM_STYLES", "MISSING_SETTINGS", "MISSING_MATCHES", "DROPOUT_TRIPLET", "SYNTHETIC_DATASET",
           "SAMPLER_MODES",
           "REMOVED_STAGES", "removed_stage", "refuse_removed_stages"]

#: modality order of the shipped data sets and models: RGB, near infrared, thermal infrared
MODALITIES: tuple[str, ...] = ("RGB", "NI", "TI")
#: SDTPS token selection during training (evaluation is always hard top-K): hard top-K (no
#: gradient into the decision), "ste" (the same decision, straight-through soft mask) and
#: "gumbel" (Gumbel noise in the ranking, straight-through soft mask)
SELECTIONS: tuple[str, ...] = ("topk", "ste", "gumbel")
#: what SDTPSNet's token branch hands to retrieval (models/heads.py): the seed review's plain
#: mean of the enhanced tokens, or the guide refined by a cross-attention over them
HEADS: tuple[str, ...] = ("mean", "refine", "residual")
#: evaluation feature of SDTPSNet: [ori, sdtps] concatenated, or one of them
TEST_FEATURES: tuple[str, ...] = ("concat", "sdtps", "ori")
#: evaluation feature taken after or before the BNNeck BatchNorm
NECK_FEATS: tuple[str, ...] = ("after", "before")
#: classifier on the concatenated [CLS] tokens (DeMo DIRECT=1) or one per modality (DIRECT=0)
ORI_HEADS: tuple[str, ...] = ("concat", "per_modality")
#: how the loss terms of several heads combine: mean (torchreid) or sum (DeMo)
HEAD_REDUCTIONS: tuple[str, ...] = ("mean", "sum")
#: training transforms: torchreid's build_transforms or DeMo's pipeline
TRANSFORM_STYLES: tuple[str, ...] = ("torchreid", "demo")
#: rows of the missing-modality table ("none" = all modalities present; "RGB+NI" zeroes both)
MISSING_SETTINGS: tuple[str, ...] = ("none", *MODALITIES,
                                     *(f"{a}+{b}" for i, a in enumerate(MODALITIES)
                                       for b in MODALITIES[i + 1:]))
#: ``sdtps.missing_match``: the ranking feature as it is ("plain") or presence-aware, per-modality
#: normalised blocks so that a match runs over the modalities both sides have ("present")
MISSING_MATCHES: tuple[str, ...] = ("plain", "present")
#: ``train.modality_dropout.triplet``: the samples the triplet term ranks under modality dropout
DROPOUT_TRIPLET: tuple[str, ...] = ("all", "complete")
#: ``sampler.distributed``: P x K share per rank under DDP (see torchreid_sdtps.engine.ddp)
SAMPLER_MODES: tuple[str, ...] = ("auto", "always", "never")
#: registered name of the generated synthetic data set (the demo's data)
SYNTHETIC_DATASET = "synthetic_msreid"

#: DeMo stages that SDTPS replaces (review R3); an option or config key naming one is refused
REMOVED_STAGES: tuple[str, ...] = ("hdm", "atm", "moe")
_REMOVED_RE = re.compile(r"(?:^|[^a-z0-9])(" + "|".join(REMOVED_STAGES) + r")(?:$|[^a-z0-9])")


def removed_stage(name: str) -> str | None:
    """The removed stage (``"HDM"``, ``"ATM"``, ``"MOE"``) that ``name`` asks for, if any.

    A stage counts as a word of the lower-cased name, delimited by anything but letters and
    digits: ``use_hdm``, ``MODEL.ATM``, ``MoE_experts`` match; ``atmosphere`` does not.
    """
    match = _REMOVED_RE.search(str(name).lower())
    return match.group(1).upper() if match else None


def refuse_removed_stages(names: Iterable[str], kind: str, where: str = "") -> None:
    """Raise :class:`ConfigError` for the first of ``names`` that asks for HDM/ATM/MoE.

    ``kind`` says what the names are ("config key", "option") and ``where`` where they came
    from (" in config file 'x.yaml'", " of SDTPSNet").
    """
    for name in names:
        stage = removed_stage(name)
        if stage is not None:
            raise ConfigError(
                f"{kind} '{name}'{where} asks for {stage}: SDTPS replaces HDM/ATM in this project "
                "(DeMo's mixture-of-experts stages do not exist here); remove it (token selection "
                "is configured by the sdtps options: ratio, aggr_ratio, num_aggr, beta, "
                "selection, gumbel_noise, gumbel_tau, score_grad)")
