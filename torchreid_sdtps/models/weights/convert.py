"""Converting a pretrained state dict to a :class:`ViTBackbone`'s keys and loading it.

Key conversion is timm's public ``vision_transformer.checkpoint_filter_fn`` (OpenAI CLIP,
DINOv2, ... layouts) and .npz files are loaded by timm's ``VisionTransformer.load_pretrained``;
this module adds what timm does not do for a re-id backbone: resampling the position embedding
from a *non-square* source grid (``src_grid``), keeping the CLIP projection (timm's bias-free
``head``) as the backbone's ``proj``, dropping classifier heads and blocks beyond the
backbone's depth, and checking shapes with errors that name the file.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ...dist import is_main_process
from .fetch import download_pretrained
from .read import EXPECTED_FORMATS, WeightsFormatError, _zip_names, read_weights

__all__ = ["load_pretrained"]

logger = logging.getLogger(__name__)


def _split_layout(sd: dict[str, torch.Tensor], path: str
                  ) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Name the layout of ``sd`` and bring it to one ``checkpoint_filter_fn`` reads.

    Returns ``(format, sd, extra)``; ``extra`` holds keys of a saved backbone wrapper itself
    (``proj.weight``, ``sie_embed``).
    """
    if "class_embedding" in sd and "conv1.weight" in sd:  # the CLIP visual tower saved on its own
        sd = {"visual." + k: v for k, v in sd.items()}
    if "visual.class_embedding" in sd:
        return "openai-clip", sd, {}
    if any(k.startswith("vit.") for k in sd):  # a saved ViTBackbone
        extra = {k: v for k, v in sd.items() if not k.startswith("vit.")}
        return "backbone", {k[4:]: v for k, v in sd.items() if k.startswith("vit.")}, extra
    if "patch_embed.proj.weight" in sd or "cls_token" in sd or "pos_embed" in sd:
        return "timm", dict(sd), {}
    raise WeightsFormatError(
        f"checkpoint {path} has no ViT weights I recognise (first keys: {list(sd)[:6]}). Expected {EXPECTED_FORMATS}.")


def _source_grid(n_tokens: int, target: tuple[int, int], src_grid: Sequence[int] | None,
                 path: str) -> tuple[int, int]:
    """Patch grid the checkpoint's position embedding was trained on."""
    if src_grid is not None:
        gh, gw = (int(s) for s in src_grid)
        if gh * gw != n_tokens:
            raise WeightsFormatError(f"src_grid {tuple(src_grid)} does not match the {n_tokens} position "
                                     f"tokens of {path}")
        return gh, gw
    if n_tokens == target[0] * target[1]:
        return target  # same token count: assume the same grid (e.g. our own checkpoint reloaded)
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise WeightsFormatError(
            f"cannot infer the patch grid of the {n_tokens} position tokens in {path} (not square); "
            "pass src_grid=(gh, gw) to load_pretrained")
    return side, side


def _resample_pos(pos: torch.Tensor, backbone: nn.Module, path: str, src_grid: Sequence[int] | None,
                  notes: list[str], interpolation: str = "bicubic") -> torch.Tensor:
    """Resample a ``(1, prefix + gh*gw, C)`` (or 2-D CLIP) position embedding to the backbone grid.

    ``interpolation`` ``"bilinear"`` is DeMo's CLIP ``resize_pos_embed`` (plain bilinear, no
    antialias); ``"bicubic"`` timm's default (bicubic with antialias)."""
    pos = pos.float()  # OpenAI archives are fp16
    if pos.dim() == 2:
        pos = pos.unsqueeze(0)
    npt = backbone.num_prefix_tokens
    old = _source_grid(pos.shape[1] - npt, backbone.grid_size, src_grid, path)
    if old == backbone.grid_size:
        return pos
    notes.append(f"pos_embed resampled {old[0]}x{old[1]} -> {backbone.grid_size[0]}x{backbone.grid_size[1]}")
    return resample_abs_pos_embed(pos, new_size=list(backbone.grid_size), old_size=list(old),
                                  num_prefix_tokens=npt, interpolation=interpolation,
                                  antialias=interpolation == "bicubic")


def _to_backbone_keys(sd: dict[str, torch.Tensor], backbone: nn.Module, path: str,
                      src_grid: Sequence[int] | None, notes: list[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """Convert a checkpoint to the backbone's own keys (``vit.*``, ``proj.weight``, ``sie_embed``).

    timm's ``checkpoint_filter_fn`` converts the keys; the position embedding is taken out
    before and resampled here, because timm cannot be told a non-square source grid.
    """
    fmt, sd, extra = _split_layout(sd, path)
    pos_key = "visual.positional_embedding" if fmt == "openai-clip" else "pos_embed"
    pos = sd.pop(pos_key, None)
    vit_sd = checkpoint_filter_fn(sd, backbone.vit)
    if pos is not None:
        vit_sd["pos_embed"] = _resample_pos(pos, backbone, path, src_grid, notes,
                                            getattr(backbone, "pos_interpolation", "bicubic"))
    out: dict[str, torch.Tensor] = {}
    head_w, head_b = vit_sd.get("head.weight"), vit_sd.get("head.bias")
    proj = getattr(backbone.proj, "weight", None)
    if (proj is not None and head_w is not None and head_w.shape == proj.shape
            and (head_b is None or not torch.any(head_b))):
        out["proj.weight"] = head_w  # CLIP projection: timm stores it as a bias-free `head`
    elif head_w is not None:
        notes.append(f"dropped classifier head {tuple(head_w.shape)}")
    depth = len(backbone.vit.blocks)
    block_ids = {int(m.group(1)) for k in vit_sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if block_ids and max(block_ids) >= depth:
        notes.append(f"checkpoint has {max(block_ids) + 1} blocks, using the first {depth}")
    for k, v in vit_sd.items():
        m = re.match(r"blocks\.(\d+)\.", k)
        if k.startswith("head.") or (m and int(m.group(1)) >= depth):
            continue
        out["vit." + k] = v
    for k, v in extra.items():  # wrapper keys of a saved ViTBackbone (proj, sie_embed)
        out.setdefault(k, v)
    if "sie_embed" in out and (backbone.sie_embed is None or out["sie_embed"].shape != backbone.sie_embed.shape):
        notes.append("checkpoint camera embedding ignored (different num_cameras)")
        del out["sie_embed"]
    return fmt, {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def _check_shapes(sd: dict[str, torch.Tensor], backbone: nn.Module, path: str) -> None:
    own = backbone.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise WeightsFormatError(
            f"checkpoint {path} does not fit backbone {backbone.variant!r} (width {backbone.width}, "
            f"patch {backbone.patch_size}): " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))


def _npz_depth(path: str) -> int:
    ids = {int(m.group(1)) for n in _zip_names(path) for m in [re.search(r"encoderblock_(\d+)/", n)] if m}
    return max(ids) + 1 if ids else 0


def _npz_pos_tokens(path: str) -> int:
    import numpy as np
    with np.load(path, allow_pickle=False) as w:
        key = next((k for k in w.files if k.endswith("posembed_input/pos_embedding") or k == "pos_embedding"), None)
        return int(w[key].reshape(-1, w[key].shape[-1]).shape[0]) if key else 0


def _load_npz(backbone: nn.Module, path: str, notes: list[str]) -> list[str]:
    """Load a JAX .npz with timm's ``VisionTransformer.load_pretrained``; return the backbone keys it leaves unset."""
    vit = backbone.vit
    src_depth = _npz_depth(path)
    if src_depth > len(vit.blocks):
        notes.append(f"checkpoint has {src_depth} blocks, using the first {len(vit.blocks)}")
    try:
        vit.load_pretrained(path)  # resamples pos_embed to vit.patch_embed.grid_size itself
    except KeyError as e:
        raise WeightsFormatError(f".npz checkpoint {path} lacks {e} needed by backbone {backbone.variant!r} "
                                 f"(depth {len(vit.blocks)}). Expected {EXPECTED_FORMATS}.") from e
    except (ValueError, RuntimeError) as e:
        raise WeightsFormatError(f"cannot load .npz checkpoint {path} into backbone {backbone.variant!r}: "
                                 f"{str(e)[:400]}. Expected {EXPECTED_FORMATS}.") from e
    n_src = _npz_pos_tokens(path) - backbone.num_prefix_tokens
    if n_src > 0 and n_src != backbone.num_patches:
        side = math.isqrt(n_src)
        notes.append(f"pos_embed resampled {side}x{side} -> {backbone.grid_size[0]}x{backbone.grid_size[1]}")
    missing = []
    if len(list(vit.norm_pre.parameters())):
        missing += [f"vit.norm_pre.{n}" for n, _ in vit.norm_pre.named_parameters()]
    if isinstance(backbone.proj, torch.nn.Linear):
        missing.append("proj.weight")
    return missing


def load_pretrained(
    backbone: nn.Module,
    source: bool | str | os.PathLike,
    variant: str | None = None,
    src_grid: Sequence[int] | None = None,
    allow_unsafe_pickle: bool | None = None,
) -> nn.Module:
    """Load pretrained weights into ``backbone`` in place (and return it).

    Args:
        backbone: the target :class:`~torchreid_sdtps.models.backbone.ViTBackbone` (typed
            ``nn.Module`` so that this module does not import the backbone module).
        source: True for the variant's published file (downloaded once to
            ``torch.hub.get_dir()/checkpoints``), or a local checkpoint path.
        variant: which published file ``True`` means; defaults to ``backbone.variant``.
        src_grid: patch grid of the checkpoint's position embedding when it is not square
            and differs in size from the backbone's (square grids are inferred).
        allow_unsafe_pickle: allow ``torch.load(weights_only=False)`` for a file that pickles
            Python objects (e.g. a training checkpoint with its argparse ``args``); that runs
            code from the file, so only for files you trust. None: read the environment
            variable ``TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE`` (``1`` opts in); default off, and
            such a file then raises :class:`UnsafePickleError` saying how to opt in.
    """
    variant = variant or backbone.variant
    if source is True:
        path = download_pretrained(variant)
    elif isinstance(source, (str, os.PathLike)) and str(source):
        path = os.fspath(source)
    else:
        raise TypeError(f"pretrained source must be True or a file path, got {source!r}")

    kind, sd = read_weights(path, allow_unsafe_pickle)
    notes: list[str] = []
    if kind == "npz":
        fmt = "npz"
        missing, unexpected = _load_npz(backbone, path, notes), []
    else:
        fmt, full = _to_backbone_keys(sd, backbone, path, src_grid, notes)
        _check_shapes(full, backbone, path)
        missing, unexpected = backbone.load_state_dict(full, strict=False)
    missing = [k for k in missing if k != "sie_embed"]  # SIE is new: initialised, never pretrained
    if not is_main_process():  # every rank loads the same file; rank 0 reports
        return backbone
    logger.info("Loaded pretrained weights (%s format) into the %s backbone from %s%s", fmt, backbone.variant,
                path, "".join(f"; {n}" for n in notes))
    if missing:
        logger.warning("Pretrained weights %s: %d backbone keys missing, left at init: %s",
                       path, len(missing), ", ".join(missing))
    if unexpected:
        logger.warning("Pretrained weights %s: %d unexpected keys ignored: %s",
                       path, len(unexpected), ", ".join(unexpected))
    return backbone
