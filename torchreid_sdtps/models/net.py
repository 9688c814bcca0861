"""``SDTPSNet``: shared ViT -> global-local guide -> SDTPS -> two BNNeck heads (DESIGN §4).

SDTPS *replaces* DeMo's HDM/ATM (mixture-of-experts) stages: there is no HDM, ATM or MoE code
in this project, and any option asking for one is rejected (R3).

Data flow, M modalities stacked in the input::

    x (B, M, 3, H, W) -> backbone on (B*M, 3, H, W) -> cls g (B, M, C), patches P (B, M, N, C)
      -> guide g' (B, M, C) -> SDTPS -> enhanced tokens T (B, M, N_c+1, C), f (B, M, C)
      -> heads: BNNeck(sdtps = cat_m f_m) and BNNeck(ori = cat_m g'_m), each (B, M*C)

Outputs follow torchreid's convention so its stock engines train and rank the model unchanged.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from .. import dist as _dist
from ..choices import NECK_FEATS, ORI_HEADS, TEST_FEATURES, refuse_removed_stages
from ..errors import ConfigError, InputShapeError
from ..utils.modalities import present_modalities
from .backbone import _TIMM_ARGS, VARIANTS
from .factory import build_backbone
from .heads import build_head
from .missing import MissingStandIn, fill_absent, presence_match_feature
from .options import SDTPSOptions, as_options
from .sdtps import SDTPS, GlobalLocalGuide, num_aggregated, num_keep

__all__ = ["SDTPSNet", "SDTPSOptions", "BNNeck", "LOSSES", "TEST_FEATURES", "NECK_FEATS", "ORI_HEADS",
           "reject_moe_options",
           "sdtps_clip_vit_b16", "sdtps_vit_b16", "sdtps_vit_tiny"]

logger = logging.getLogger(__name__)

LOSSES = ("softmax", "triplet")


def reject_moe_options(options: dict) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) for an option asking for HDM/ATM/MoE (R3)."""
    refuse_removed_stages(sorted(map(str, options)), "option", " of SDTPSNet")


class BNNeck(nn.Module):
    """BNNeck (Luo et al. 2019, as in TransReID): BatchNorm1d with a frozen zero bias, then a
    bias-free Linear classifier. ``forward`` returns the normalised feature; the classifier is
    applied by the caller only in training (:meth:`logits`).

    ``groups=G > 1``: G independent necks on the G equal slices of the feature (DeMo's
    ``DIRECT=0``, one per modality), vectorised: BatchNorm is per channel, so one BatchNorm1d
    over the concatenation *is* G BatchNorms; the classifier is a grouped 1x1 convolution
    (G bias-free Linear layers of ``dim / G`` -> ``num_classes``).
    """

    def __init__(self, dim: int, num_classes: int, groups: int = 1) -> None:
        super().__init__()
        if groups < 1 or dim % groups:
            raise ValueError(f"BNNeck: dim {dim} is not divisible into {groups} groups")
        self.groups = int(groups)
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        nn.init.constant_(self.bn.weight, 1.0)  # weights_init_kaiming for BN
        nn.init.constant_(self.bn.bias, 0.0)
        self.classifier: nn.Module
        if self.groups == 1:
            self.classifier = nn.Linear(dim, num_classes, bias=False)
        else:
            self.classifier = nn.Conv1d(dim, self.groups * num_classes, kernel_size=1,
                                        groups=self.groups, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)  # weights_init_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, D)
        return self.bn(x)

    def logits(self, x_bn: torch.Tensor) -> list[torch.Tensor]:
        """Classifier scores of the normalised feature: ``groups`` tensors (B, num_classes)."""
        if self.groups == 1:
            return [self.classifier(x_bn)]
        return list(self.classifier(x_bn.unsqueeze(-1)).squeeze(-1)
                    .unflatten(1, (self.groups, -1)).unbind(1))


class SDTPSNet(nn.Module):
    """Multi-modal re-id network with SDTPS token selection.

    Args:
        backbone: module with ``forward(x (B',3,H,W), cam_label) -> (cls (B',C), patches (B',N,C))``
            and attributes ``out_dim`` (C) and ``num_patches`` (N of its real patch grid);
            ``img_size`` (H, W), when present, is checked on the input.
        num_classes: training identities (classifier width).
        loss: ``"softmax"`` or ``"triplet"`` (what the training forward returns).
        num_modalities: M, stacked along dim 1 of the input.
        options: the design options, :class:`~torchreid_sdtps.models.options.SDTPSOptions`
            (config node ``sdtps``), each used under its own name: ``test_feature`` (eval
            feature: ``"concat"`` = [ori, sdtps], 2*M*C, ``"sdtps"`` or ``"ori"``, M*C),
            ``neck_feat`` (after/before the BNNeck BatchNorm), ``ori_head`` (``"concat"``: one
            BNNeck + classifier on the concatenated ``ori`` feature, DeMo ``DIRECT=1``;
            ``"per_modality"``: one per modality, DIRECT=0), ``ratio``, ``beta``,
            ``selection``, ``gumbel_noise``, ``gumbel_tau``, ``score_grad`` (the
            :class:`~torchreid_sdtps.models.sdtps.SDTPS` arguments of the same names),
            ``N_c = num_aggr`` or ``round(N * ratio * aggr_ratio)`` with N the backbone's real
            patch count, and ``use_sdtps=False``: the ablation baseline without SDTPS
            (backbone, guide and the ``ori`` head; the eval feature is ``ori`` and the aux
            entries ``tokens``, ``masks``, ``scores``, ``ratio`` are ``None``). The backbone
            options (``drop_path``, ``sie_coe``...) were used by the factory that built it.
            ``mask_missing``: treat a modality whose input image is all zero (what
            :func:`~torchreid_sdtps.utils.modalities.zero_modalities` makes of a missing one,
            the extractor's ``None``) as *absent*: its guide is left out of the other
            modalities' cross-modal scores (:func:`~torchreid_sdtps.models.sdtps.combine_scores`)
            and its ``ori`` and ``sdtps`` features are 0 instead of a blank image's; detected
            in the forward pass, so evaluation, the extractor and the ONNX export agree.
        **changes: option fields overriding ``options`` (unknown names raise ``ConfigError``).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, loss: str = "softmax",
                 num_modalities: int = 3, options: SDTPSOptions | None = None,
                 **changes: Any) -> None:
        super().__init__()
        reject_moe_options(changes)
        opts = as_options(options, **changes)
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        test_feature = opts.test_feature if opts.use_sdtps else "ori"
        self.options = opts
        self.loss, self.test_feature, self.neck_feat = loss, test_feature, opts.neck_feat
        self.num_modalities = num_modalities
        self.mask_missing = bool(opts.mask_missing)
        self.missing_match = opts.missing_match
        self.backbone = backbone
        self.img_size: tuple[int, int] | None = getattr(backbone, "img_size", None)
        dim, n = int(backbone.out_dim), int(backbone.num_patches)
        n_c = (int(opts.num_aggr) if opts.num_aggr is not None
               else num_aggregated(n, opts.ratio, opts.aggr_ratio))
        self.dim = dim
        self.guide = GlobalLocalGuide(dim, num_modalities)
        self.standin = MissingStandIn(num_modalities, dim) if opts.missing_standin else None
        self.use_sdtps = bool(opts.use_sdtps)
        self.sdtps: SDTPS | None = None
        self.neck_sdtps: BNNeck | None = None
        self.head: nn.Module | None = None  # token-branch head (models/heads.py, option "head")
        if self.use_sdtps:
            self.sdtps = SDTPS(dim, n_c, num_modalities, ratio=opts.ratio, beta=opts.beta,
                               selection=opts.selection, gumbel_noise=opts.gumbel_noise,
                               gumbel_tau=opts.gumbel_tau, score_grad=opts.score_grad,
                               shift_invariant=opts.shift_invariant)
            self.head = build_head(opts.head, dim, num_modalities)
            self.neck_sdtps = BNNeck(num_modalities * dim, num_classes)
        self.ori_head = opts.ori_head
        self.neck_ori = BNNeck(num_modalities * dim, num_classes,
                               groups=num_modalities if opts.ori_head == "per_modality" else 1)
        self.feature_dim = (2 if test_feature == "concat" else 1) * num_modalities * dim
        if _dist.is_main_process():  # R10: one line per model build, rank 0 only
            logger.info("SDTPSNet: %.2fM params (guide %.3fM, SDTPS %.3fM, head %s %.3fM), M=%d, C=%d, "
                        "N=%d, K=%d, N_c=%d, selection=%s", _count(self) / 1e6,
                        _count(self.guide) / 1e6, _count(self.sdtps) / 1e6, opts.head,
                        _count(self.head) / 1e6, num_modalities, dim, n, num_keep(n, opts.ratio),
                        n_c, opts.selection if self.use_sdtps else "none (use_sdtps=False)")

    def backbone_param_prefixes(self) -> tuple[str, ...]:
        """Name prefixes (of ``named_parameters()``) of the pretrained backbone's parameters: what
        ``train.backbone_params`` means when the config leaves it empty (DeMo's ``base``)."""
        own = getattr(self.backbone, "pretrained_param_prefixes", None)
        return tuple(f"backbone.{p}" for p in own()) if callable(own) else ("backbone",)

    def as_multimodal(self, x: torch.Tensor) -> torch.Tensor:
        """The probe convention: a single-image batch ``(B, 3, H, W)`` is shown to every
        modality, i.e. broadcast to ``(B, M, 3, H, W)``.

        torchreid's tools probe a model with single images (``compute_model_complexity(model,
        (1, 3, H, W))`` in ``scripts/main.py``, ``FeatureExtractor``); with this convention they
        measure the full multi-modal model (the same parameters and FLOPs as an ``(B, M, 3, H,
        W)`` input). Real multi-modal data always arrives as ``(B, M, 3, H, W)``.
        """
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3:
            return x.unsqueeze(1).expand(-1, self.num_modalities, -1, -1, -1)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        m = self.num_modalities
        h, w = self.img_size if self.img_size is not None else ("H", "W")
        ok = (isinstance(x, torch.Tensor) and x.dim() == 5 and x.shape[1] == m and x.shape[2] == 3
              and (self.img_size is None or tuple(x.shape[-2:]) == tuple(self.img_size)))
        if not ok:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputShapeError(
                f"SDTPSNet expects input of shape (B, M, 3, H, W) = (B, {m}, 3, {h}, {w}) with "
                f"M={m} modalities stacked in dim 1 (or one image per sample, (B, 3, {h}, {w}), "
                f"shown to every modality); got {got}")

    def forward_features(self, x: torch.Tensor, cam_label: torch.Tensor | None = None) -> dict:
        """Everything before the heads, as a dict of tensors (see :meth:`extract`)."""
        x = self.as_multimodal(x)
        self._check_input(x)
        b, m = x.shape[:2]
        # (B, M) bool or None: which modalities hold an image (models/missing.py)
        present = (present_modalities(x) if self.mask_missing or self.missing_match != "plain"
                   else None)
        hidden = present if self.mask_missing else None  # absent modalities masked in the model
        if hidden is not None and self.training and bool(hidden.all()):
            hidden = None  # a complete training batch: the plain path, bit for bit (same values)
        if cam_label is not None:
            cam_label = torch.as_tensor(cam_label, device=x.device).reshape(-1)
            if cam_label.shape[0] != b:
                raise InputShapeError(f"cam_label must have shape ({b},) for a batch of {b}; "
                                      f"got {tuple(cam_label.shape)}")
            cam_label = cam_label.repeat_interleave(m)  # (B*M,), matches x.flatten(0, 1)
        cls, patches = self.backbone(x.flatten(0, 1), cam_label)  # (B*M, C), (B*M, N, C)
        cls, patches = cls.unflatten(0, (b, m)), patches.unflatten(0, (b, m))  # (B,M,C), (B,M,N,C)
        guide = self.guide(cls, patches)  # g' (B, M, C)
        standin = self.standin
        # an absent modality's features: 0, or the learned stand-in
        g_out = fill_absent(guide, hidden, None if standin is None else standin.ori)
        if self.sdtps is None:  # ablation baseline: guide + ori head only
            return {"cls": cls, "global": g_out, "tokens": None, "masks": None, "soft_masks": None,
                    "scores": None, "sdtps": None, "ori": g_out.flatten(1), "present": present}
        out = self.sdtps(patches, guide, hidden)
        feature = self.head(out.tokens, guide)  # f_m (B, M, C)
        feature = fill_absent(feature, hidden, None if standin is None else standin.sdtps)
        return {"cls": cls, "global": g_out, "tokens": out.tokens, "masks": out.mask,
                "soft_masks": out.soft_mask, "scores": out.score, "present": present,
                "sdtps": feature.flatten(1), "ori": g_out.flatten(1)}  # (B, M*C) each

    def _test_output(self, feats: dict) -> torch.Tensor:
        after = self.neck_feat == "after"
        ori = self.neck_ori(feats["ori"]) if after else feats["ori"]
        if self.sdtps is None:  # the ablation baseline: its feature is ori
            out = ori
        else:
            sdtps = self.neck_sdtps(feats["sdtps"]) if after else feats["sdtps"]
            out = {"sdtps": sdtps, "ori": ori}.get(self.test_feature)
            out = torch.cat([ori, sdtps], dim=1) if out is None else out
        if self.missing_match == "present":  # the match over present modalities only
            return presence_match_feature(out, feats["present"], self.dim)
        return out

    def forward(self, x: torch.Tensor, cam_label: torch.Tensor | None = None,
                return_aux: bool = False) -> Any:
        """Train: ``[logits_sdtps, logits_ori]`` (softmax) or ``(logits, [feat_sdtps, feat_ori])``
        (triplet), with ``ori_head="per_modality"`` one ``ori`` entry per modality (RGB, NI, TI
        order); eval: feature ``(B, D)``. ``return_aux=True`` returns ``(output, aux)``."""
        feats = self.forward_features(x, cam_label)
        if not self.training:
            output: Any = self._test_output(feats)
        else:
            names = ("sdtps", "ori") if self.sdtps is not None else ("ori",)
            necks = {"sdtps": self.neck_sdtps, "ori": self.neck_ori}
            logits = [s for k in names for s in necks[k].logits(necks[k](feats[k]))]  # (B, K) each
            per_mod = self.ori_head == "per_modality"
            metric = [f for k in names  # the features the triplet terms see, one per head
                      for f in (feats["global"].unbind(1) if k == "ori" and per_mod else [feats[k]])]
            output = logits if self.loss == "softmax" else (logits, metric)
        if not return_aux:
            return output
        ratio = float(self.sdtps.ratio) if self.sdtps is not None else None
        aux = {"masks": feats["masks"], "soft_masks": feats["soft_masks"], "scores": feats["scores"],
               "tokens": feats["tokens"], "ratio": ratio, "global": feats["global"]}
        return output, aux

    def extract(self, x: torch.Tensor, cam_label: torch.Tensor | None = None) -> dict:
        """Per-modality outputs for analysis (R6): ``global`` g' (B,M,C), ``cls`` (B,M,C),
        ``tokens`` (B,M,N_c+1,C), ``masks`` (B,M,N), ``scores`` (B,M,N), ``feature`` (B,D).

        Runs in the current mode (call ``model.eval()`` first for deterministic masks and the
        ranking feature) and under the caller's grad mode.
        """
        feats = self.forward_features(x, cam_label)
        keys = ("global", "cls", "tokens", "masks", "scores")
        return {**{k: feats[k] for k in keys}, "feature": self._test_output(feats)}


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# Factories (torchreid's signature; registered through the plugin's entry points)
# --------------------------------------------------------------------------------------------
def _build(variant: str, img_size: int | tuple[int, int], num_classes: int, loss: str,
           pretrained: bool | str, num_cameras: int = 0, options: SDTPSOptions | None = None,
           num_modalities: int = 3, **kwargs: Any) -> SDTPSNet:
    """Build the backbone and wrap it in :class:`SDTPSNet`.

    ``kwargs`` are :class:`SDTPSOptions` fields (applied to ``options``), ``build_backbone``
    arguments (``allow_unsafe_pickle``) or backbone architecture overrides (``depth``,
    ``embed_dim``...); any other name raises :class:`ConfigError` naming it.
    """
    reject_moe_options(kwargs)
    fields = set(SDTPSOptions.field_names())
    opts = as_options(options, **{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
    unknown = sorted(set(kwargs) - _BACKBONE_ARGS)
    if unknown:
        raise ConfigError(f"sdtps_{variant}: unknown option(s) {unknown}; SDTPS options: "
                          f"{sorted(fields)}; backbone overrides: {sorted(_BACKBONE_ARGS)}")
    if loss not in LOSSES:  # before the (possibly downloading) backbone build
        raise ConfigError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if opts.patch_size is not None:
        if "patch_size" in kwargs:
            raise ConfigError(f"sdtps_{variant}: patch size given twice (sdtps.patch_size "
                              f"{opts.patch_size} and backbone override {kwargs['patch_size']})")
        native = VARIANTS[variant].timm_kwargs["patch_size"]
        if int(opts.patch_size) != native and (opts.backbone_weights or pretrained):
            raise ConfigError(f"sdtps.patch_size {opts.patch_size} differs from the pretrained "
                              f"weights' {native} of sdtps_{variant}: use model.pretrained False "
                              "(random init) or the variant's patch size")
        kwargs["patch_size"] = int(opts.patch_size)
    backbone = build_backbone(variant, img_size=img_size,
                              num_cameras=num_cameras if opts.sie_camera else 0,
                              pretrained=opts.backbone_weights or pretrained,
                              sie_coe=opts.sie_coe, drop_path_rate=opts.drop_path, **kwargs)
    return SDTPSNet(backbone, num_classes, loss=loss, num_modalities=num_modalities, options=opts)


#: what ``_build`` passes on to the backbone besides the options
_BACKBONE_ARGS = frozenset(_TIMM_ARGS - {"drop_path_rate"} | {"proj_dim", "allow_unsafe_pickle"})


def sdtps_clip_vit_b16(num_classes: int, loss: str = "softmax", pretrained: bool | str = True,
                       use_gpu: bool = True, img_size: int | tuple[int, int] = (256, 128),
                       options: SDTPSOptions | None = None, **kwargs: Any) -> SDTPSNet:
    """SDTPS on CLIP ViT-B/16 (C=512 after the visual projection), 256x128 by default.
    ``use_gpu`` is accepted for torchreid's signature; the engine moves the model."""
    return _build("clip_vit_b16", img_size, num_classes, loss, pretrained, options=options, **kwargs)


def sdtps_vit_b16(num_classes: int, loss: str = "softmax", pretrained: bool | str = True,
                  use_gpu: bool = True, img_size: int | tuple[int, int] = (256, 128),
                  options: SDTPSOptions | None = None, **kwargs: Any) -> SDTPSNet:
    """SDTPS on ImageNet ViT-B/16 (C=768), 256x128 by default."""
    return _build("vit_b16", img_size, num_classes, loss, pretrained, options=options, **kwargs)


def sdtps_vit_tiny(num_classes: int, loss: str = "softmax", pretrained: bool | str = True,
                   use_gpu: bool = True, img_size: int | tuple[int, int] = (128, 64),
                   options: SDTPSOptions | None = None, **kwargs: Any) -> SDTPSNet:
    """SDTPS on a 4-block ViT-Ti/16 (C=192), 128x64 by default: for CPUs and tests."""
    return _build("vit_tiny", img_size, num_classes, loss, pretrained, options=options, **kwargs)
