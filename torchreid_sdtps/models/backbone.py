"""ViT backbones for SDTPS: a thin wrapper around timm's ``VisionTransformer``.

The ViT itself is built by timm (``timm.create_model`` with the reference config of each
variant); this module only adds what re-id needs on top of it:

* a non-square input size (256x128 person crops) with the patch grid read back from timm's
  patch embedding, so downstream token counts never come from a stride formula;
* the optional SIE camera embedding, in DeMo's two forms: the ImageNet ViTs add it to every
  token together with the position embedding (TransReID), the CLIP tower to the class token
  only (DeMo's CLIP ``VisionTransformer``: ``x[:, 0] + cv_emb`` before the position embedding);
* DeMo's stochastic depth: the ImageNet ViTs take ``drop_path_rate`` (DeMo's
  ``MODEL.DROP_PATH``, 0.1), the CLIP tower has none (DeMo never passes it there);
* for CLIP, OpenAI's visual projection (768 -> 512) applied to *every* token after the final
  LayerNorm, so the class token and the patches live in the same C=512 space;
* a forward that returns ``(cls (B', C), patches (B', N, C))``.

Pretrained weights (download, format detection, key conversion, position-embedding
resampling) live in :mod:`torchreid_sdtps.models.weights`; :func:`torchreid_sdtps.models.factory.build_backbone`
joins the two (neither module imports the other).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import timm
import torch
from timm.layers import LayerNorm, trunc_normal_
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["VariantSpec", "VARIANTS", "ViTBackbone", "variant_names"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VariantSpec:
    """Static description of one backbone variant.

    ``timm_name`` is the timm model whose config is the reference; ``timm_kwargs`` repeats its
    architecture arguments explicitly (so the real sizes are visible here and asserted by the
    tests) and may be overridden per build (tests build narrow models that way).
    ``proj_dim`` is the CLIP visual projection width, or None for no projection.
    ``mean``/``std`` are the pixel statistics the pretrained weights expect.
    ``drop_path_rate`` is the stochastic depth used when the caller gives none (DeMo: 0 for
    CLIP, ``MODEL.DROP_PATH`` = 0.1 for the ImageNet ViT); ``sie_tokens`` where the SIE camera
    term goes (``"cls"``: the class token only, DeMo's CLIP form; ``"all"``: every token,
    TransReID's); ``pos_interpolation`` how pretrained position embeddings are resampled to
    another patch grid (DeMo's CLIP loader: ``"bilinear"``; timm's default: ``"bicubic"``).
    """

    timm_name: str
    timm_kwargs: dict[str, Any]
    default_img_size: tuple[int, int]
    proj_dim: int | None = None
    mean: tuple[float, float, float] = INCEPTION_MEAN
    std: tuple[float, float, float] = INCEPTION_STD
    drop_path_rate: float = 0.1
    sie_tokens: str = "all"
    pos_interpolation: str = "bicubic"
    notes: str = field(default="", compare=False)


VARIANTS: dict[str, VariantSpec] = {
    # OpenAI CLIP ViT-B/16 image tower: pre-norm (ln_pre), quick-GELU, LayerNorm eps 1e-5,
    # no patch-embed bias; reference: timm `vit_base_patch16_clip_quickgelu_224`.
    "clip_vit_b16": VariantSpec(
        timm_name="vit_base_patch16_clip_quickgelu_224",
        timm_kwargs=dict(
            patch_size=16, embed_dim=768, depth=12, num_heads=12, pre_norm=True,
            norm_layer=partial(LayerNorm, eps=1e-5), act_layer="quick_gelu",
        ),
        default_img_size=(256, 128),
        proj_dim=512,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        drop_path_rate=0.0,  # DeMo's CLIP tower has no DropPath (MODEL.DROP_PATH is not passed)
        sie_tokens="cls",  # DeMo modeling/clip/model.py: x[:, 0] = x[:, 0] + cv_emb
        pos_interpolation="bilinear",  # DeMo modeling/clip/model.py resize_pos_embed
        notes="OpenAI CLIP ViT-B/16 visual tower + 768->512 projection on every token",
    ),
    # ImageNet ViT-B/16 (augreg in21k -> in1k); reference: timm `vit_base_patch16_224`.
    "vit_b16": VariantSpec(
        timm_name="vit_base_patch16_224",
        timm_kwargs=dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
        default_img_size=(256, 128),
        notes="ImageNet-21k/1k ViT-B/16 (augreg)",
    ),
    # ViT-Ti/16 widths with 4 of its 12 layers: trains on 2 CPU cores (docs/weights.md).
    "vit_tiny": VariantSpec(
        timm_name="vit_tiny_patch16_224",
        timm_kwargs=dict(patch_size=16, embed_dim=192, depth=4, num_heads=3),
        default_img_size=(128, 64),
        notes="ViT-Ti/16 truncated to 4 blocks (pretrained: first 4 blocks of augreg ViT-Ti/16)",
    ),
}

# Build arguments fixed by the wrapper; an override of one of these is rejected.
_RESERVED = frozenset({"img_size", "num_classes", "global_pool", "class_token", "dynamic_img_size",
                       "no_embed_class", "reg_tokens", "fc_norm", "final_norm", "in_chans", "pretrained"})
_TIMM_ARGS = frozenset(inspect.signature(VisionTransformer.__init__).parameters) - {"self"} - _RESERVED
SIE_TOKENS = ("cls", "all")


def variant_names() -> tuple[str, ...]:
    """The accepted ``variant`` strings."""
    return tuple(VARIANTS)


def _spec(variant: str) -> VariantSpec:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown backbone variant {variant!r}; expected one of {sorted(VARIANTS)}") from None


def _as_hw(img_size: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if img_size is None:
        return default
    if isinstance(img_size, int):
        return img_size, img_size
    hw = tuple(int(s) for s in img_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"img_size must be (H, W) with positive ints, got {img_size!r}")
    return hw  # type: ignore[return-value]


class ViTBackbone(nn.Module):
    """A timm ViT returning ``(cls, patches)`` for re-id, with optional SIE camera embedding.

    Args:
        variant: one of :data:`VARIANTS` (``clip_vit_b16``, ``vit_b16``, ``vit_tiny``).
        img_size: input ``(H, W)``; defaults to the variant's (256x128 for B/16, 128x64 tiny).
            H and W must be multiples of the patch size.
        num_cameras: number of SIE camera embeddings; 0 disables SIE.
        sie_coe: weight of the camera embedding (TransReID uses 3.0).
        drop_path_rate: stochastic depth of the timm blocks; None: the variant's (DeMo's) value,
            0 for ``clip_vit_b16``, 0.1 for the ImageNet ViTs. An explicit value is used as given.
        sie_tokens: ``"cls"`` adds the camera term to the class token only, ``"all"`` to every
            token; None: the variant's (``"cls"`` for CLIP, ``"all"`` otherwise, as in DeMo).
        **overrides: timm ``VisionTransformer`` arguments replacing the variant's
            (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``...) plus ``proj_dim``
            (CLIP projection width; only meaningful for ``clip_vit_b16``).

    SIE (``"all"``): ``tokens = [cls, patches] + pos_embed + sie_coe * sie_embed[cam_label]``;
    (``"cls"``): the same term on ``cls`` alone, the patches carry no camera term. When
    ``cam_label`` is None no camera term is added (also when ``num_cameras > 0``), and with
    ``num_cameras == 0`` a given ``cam_label`` is ignored.
    """

    def __init__(
        self,
        variant: str = "vit_tiny",
        img_size: int | tuple[int, int] | None = None,
        num_cameras: int = 0,
        sie_coe: float = 3.0,
        drop_path_rate: float | None = None,
        sie_tokens: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        spec = _spec(variant)
        proj_dim = overrides.pop("proj_dim", spec.proj_dim)
        bad = sorted(set(overrides) - _TIMM_ARGS)
        if bad:
            raise TypeError(
                f"unsupported backbone override(s) {bad} for variant {variant!r}; accepted: "
                f"proj_dim and timm VisionTransformer arguments {sorted(_TIMM_ARGS)}")
        self.variant = variant
        self.img_size = _as_hw(img_size, spec.default_img_size)
        kwargs = dict(spec.timm_kwargs, **overrides)
        patch = kwargs["patch_size"]
        if self.img_size[0] % patch or self.img_size[1] % patch:
            raise ValueError(f"img_size {self.img_size} must be a multiple of the patch size {patch}")
        if int(num_cameras) < 0:
            raise ValueError(f"num_cameras must be >= 0, got {num_cameras}")
        self.sie_tokens = spec.sie_tokens if sie_tokens is None else sie_tokens
        if self.sie_tokens not in SIE_TOKENS:
            raise ValueError(f"sie_tokens must be one of {SIE_TOKENS}, got {sie_tokens!r}")
        #: how weights.py resamples a pretrained position embedding to this grid
        self.pos_interpolation = spec.pos_interpolation
        if drop_path_rate is None:
            drop_path_rate = spec.drop_path_rate
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.drop_path_rate = float(drop_path_rate)
        kwargs.update(img_size=self.img_size, num_classes=0, drop_path_rate=self.drop_path_rate)
        # timm builds the ViT; `pretrained` weights are loaded by weights.py, not by timm.
        self.vit: VisionTransformer = timm.create_model(spec.timm_name, pretrained=False, **kwargs)

        self.width: int = int(self.vit.embed_dim)
        self.patch_size: int = int(patch)
        self.grid_size: tuple[int, int] = tuple(int(g) for g in self.vit.patch_embed.grid_size)  # type: ignore
        self.num_patches: int = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens: int = int(self.vit.num_prefix_tokens)
        self.mean, self.std = spec.mean, spec.std

        # CLIP visual projection, applied to every token (OpenAI: x @ proj, no bias).
        factory = {k: overrides[k] for k in ("device", "dtype") if overrides.get(k) is not None}
        self.proj: nn.Module = nn.Linear(self.width, proj_dim, bias=False, **factory) if proj_dim else nn.Identity()
        if proj_dim:
            nn.init.normal_(self.proj.weight, std=self.width ** -0.5)
        self.out_dim: int = int(proj_dim) if proj_dim else self.width

        self.num_cameras = int(num_cameras)
        self.sie_coe = float(sie_coe)
        if self.num_cameras > 0:
            sie = torch.zeros(self.num_cameras, 1, self.width, **factory)
            self.sie_embed: nn.Parameter | None = nn.Parameter(sie)
            trunc_normal_(self.sie_embed, std=0.02)
        else:
            self.register_parameter("sie_embed", None)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, img_size={self.img_size}, grid_size={self.grid_size}, "
                f"width={self.width}, out_dim={self.out_dim}, num_cameras={self.num_cameras}, "
                f"sie_tokens={self.sie_tokens!r}, drop_path_rate={self.drop_path_rate}")

    def pretrained_param_prefixes(self) -> tuple[str, ...]:
        """Name prefixes of the parameters the pretrained weights provide (the ViT and the CLIP
        projection): DeMo's ``base`` parameters, trained at the backbone lr. The SIE embedding
        is new (DeMo's ``cv_embed`` sits outside ``base``) and is not among them."""
        return ("vit", "proj") if isinstance(self.proj, nn.Linear) else ("vit",)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameter names conventionally excluded from weight decay."""
        names = {f"vit.{n}" for n in self.vit.no_weight_decay()}
        return names | ({"sie_embed"} if self.sie_embed is not None else set())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the timm blocks."""
        self.vit.set_grad_checkpointing(enable)

    def _camera_term(self, cam_label: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(cam_label, torch.Tensor):
            cam_label = torch.as_tensor(cam_label)
        if cam_label.dim() != 1 or cam_label.shape[0] != batch:
            raise ValueError(f"cam_label must have shape ({batch},), got {tuple(cam_label.shape)}")
        if cam_label.dtype.is_floating_point or cam_label.dtype == torch.bool:
            raise ValueError(f"cam_label must be an integer tensor, got dtype {cam_label.dtype}")
        cam_label = cam_label.to(device=self.sie_embed.device, dtype=torch.long)
        if torch.compiler.is_exporting():  # no data-dependent check in an exported graph;
            return self.sie_coe * self.sie_embed[cam_label]  # its Gather bound-checks instead
        lo, hi = int(cam_label.min()), int(cam_label.max())
        if lo < 0 or hi >= self.num_cameras:
            raise ValueError(
                f"cam_label values must be in [0, {self.num_cameras - 1}] (num_cameras={self.num_cameras}), "
                f"got values in [{lo}, {hi}]")
        return self.sie_coe * self.sie_embed[cam_label]

    def forward(
        self, x: torch.Tensor, cam_label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images ``x (B', 3, H, W)`` into ``(cls (B', C), patches (B', N, C))``."""
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"expected input of shape (B, 3, {self.img_size[0]}, {self.img_size[1]}), got {tuple(x.shape)}")
        vit = self.vit
        t = vit._pos_embed(vit.patch_embed(x))  # [cls, patches] + pos_embed
        if cam_label is not None and self.sie_embed is not None:
            cam = self._camera_term(cam_label, t.shape[0])  # (B', 1, C)
            if self.sie_tokens == "all":
                t = t + cam
            else:  # class token only (a sum: the same before or after the position embedding)
                t = torch.cat([t[:, :1] + cam, t[:, 1:]], dim=1)
        t = vit.norm_pre(vit.patch_drop(t))
        if vit.grad_checkpointing and not torch.jit.is_scripting():
            t = checkpoint_seq(vit.blocks, t)
        else:
            t = vit.blocks(t)
        t = self.proj(vit.norm(t))
        return t[:, 0], t[:, self.num_prefix_tokens:]
