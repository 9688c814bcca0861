"""Pretrained weights for :class:`~torchreid_sdtps.models.backbone.ViTBackbone`.

``load_pretrained(backbone, source, variant)`` finds a checkpoint (the variant's published
file, downloaded once into the torch hub cache, or a local path), reads it in whichever
published format it is in, converts it to timm's key names with timm's own converters,
resamples the position embedding to the backbone's H x W patch grid and loads it.

Accepted files:

* OpenAI CLIP TorchScript archives (``ViT-B-16.pt`` as published) and plain OpenAI CLIP
  state dicts (``visual.*`` keys, or the visual tower alone) -> timm ``_convert_openai_clip``;
  ``visual.proj`` becomes the backbone's 768->512 projection.
* timm / plain PyTorch state dicts (``.pth``/``.pt``/``.bin``), optionally wrapped in
  ``{"state_dict": ...}`` / ``{"model": ...}`` and with ``module.`` prefixes; also a saved
  :class:`ViTBackbone` state dict (``vit.*`` keys).
* Google/timm JAX ``.npz`` checkpoints (augreg) -> timm ``_load_weights``.

Classifier heads are dropped; blocks beyond the backbone's depth are dropped (the tiny
variant uses the first blocks of ViT-Ti/16). Missing and unexpected keys are logged once.
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import _convert_openai_clip, _load_weights

from ..dist import is_main_process
from ..io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .backbone import ViTBackbone

__all__ = [
    "PretrainedFile", "PRETRAINED_FILES", "PretrainedDownloadError", "WeightsFormatError",
    "cached_path", "download_pretrained", "read_checkpoint", "load_pretrained",
]

logger = logging.getLogger(__name__)

EXPECTED_FORMATS = (
    "an OpenAI CLIP TorchScript archive or state dict (visual.* keys), a timm/PyTorch state dict "
    "(.pth/.pt/.bin; optionally under 'state_dict'/'model', 'module.' prefixes allowed), "
    "or a JAX/timm .npz checkpoint (augreg)")


@dataclass(frozen=True)
class PretrainedFile:
    """The published checkpoint of one variant: where it is fetched from and what it holds."""

    url: str
    sha256: Optional[str] = None  # full digest when the publisher gives one (OpenAI puts it in the URL)
    description: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# Sources: OpenAI CLIP `clip/clip.py::_MODELS["ViT-B/16"]`; timm 1.0 `vision_transformer.py`
# default_cfgs `vit_base_patch16_224.augreg_in21k_ft_in1k` / `vit_tiny_patch16_224.augreg_in21k_ft_in1k`.
PRETRAINED_FILES: Dict[str, PretrainedFile] = {
    "clip_vit_b16": PretrainedFile(
        url="https://openaipublic.azureedge.net/clip/models/"
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        description="OpenAI CLIP ViT-B/16 (TorchScript archive, fp16, ~335 MiB)",
    ),
    "vit_b16": PretrainedFile(
        url="https://storage.googleapis.com/vit_models/augreg/"
            "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz",
        description="augreg ViT-B/16, ImageNet-21k pretrained, ImageNet-1k fine-tuned at 224 (.npz, ~330 MiB)",
    ),
    "vit_tiny": PretrainedFile(
        url="https://storage.googleapis.com/vit_models/augreg/"
            "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz",
        description="augreg ViT-Ti/16, ImageNet-21k pretrained, ImageNet-1k fine-tuned at 224 (.npz, ~22 MiB)",
    ),
}


class PretrainedDownloadError(RuntimeError):
    """The published file could not be fetched; the message says where to put it by hand."""


class WeightsFormatError(ValueError):
    """A checkpoint file is not in a supported format or does not fit the backbone."""


def _published(variant: str) -> PretrainedFile:
    try:
        return PRETRAINED_FILES[variant]
    except KeyError:
        raise ValueError(
            f"no published pretrained weights for variant {variant!r}; known: {sorted(PRETRAINED_FILES)}. "
            "Pass a local checkpoint path instead.") from None


def cached_path(variant: str) -> str:
    """Where the published file of ``variant`` lives: ``torch.hub.get_dir()/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", _published(variant).filename)


def download_pretrained(variant: str, progress: bool = True) -> str:
    """Return the cached published file of ``variant``, downloading it first if absent.

    The download goes to a temporary file in the cache folder that is renamed into place only
    when complete (and hash-checked when a digest is published), so an interrupted or failed
    download never leaves a partial checkpoint behind.
    """
    pub = _published(variant)
    dst = cached_path(variant)
    if os.path.isfile(dst):
        return dst
    try:
        with atomic_path(dst) as tmp:
            logger.info("Downloading %s pretrained weights from %s to %s", variant, pub.url, dst)
            torch.hub.download_url_to_file(pub.url, tmp, hash_prefix=pub.sha256,
                                           progress=progress)
    except Exception as e:  # network, disk, hash mismatch: all end in the same instruction
        raise PretrainedDownloadError(
            f"could not download the pretrained weights of {variant!r} ({pub.description}) from "
            f"{pub.url}: {type(e).__name__}: {e}. Without network access, fetch that URL elsewhere "
            f"and place the file at {dst} (or pass its local path as `pretrained`).") from e
    return dst


# ----------------------------------------------------------------------------- reading files

def _zip_names(path: str) -> List[str]:
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _torch_load(path: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_err:  # noqa: BLE001 - retried below, reported if both fail
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            raise WeightsFormatError(
                f"cannot read checkpoint {path}: {type(safe_err).__name__}: {str(safe_err)[:300]}. "
                f"Expected {EXPECTED_FORMATS}.") from safe_err
        logger.warning("%s holds non-tensor Python objects; it was loaded with torch.load(weights_only=False). "
                       "Only load checkpoints you trust.", path)
        return obj


def _unwrap(obj: object, path: str) -> Dict[str, torch.Tensor]:
    """Turn a loaded object into a flat ``{name: tensor}`` dict without wrapper prefixes."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}, ...
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state_dict")
                      if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict. "
                                 f"Expected {EXPECTED_FORMATS}.")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsFormatError(f"checkpoint {path} contains no tensors (keys: {list(obj)[:8]}). "
                                 f"Expected {EXPECTED_FORMATS}.")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: str) -> Tuple[str, Optional[Dict[str, torch.Tensor]]]:
    """Read ``path``; return ``("npz", None)`` or ``(kind, state_dict)`` with kind "jit"/"torch"."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    names = _zip_names(path)
    if names and all(n.endswith(".npy") for n in names):
        return "npz", None
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        try:  # OpenAI CLIP publishes TorchScript archives
            with warnings.catch_warnings():  # torch>=2.9 flags TorchScript as deprecated; it is the published format
                warnings.simplefilter("ignore", FutureWarning)
                archive = torch.jit.load(path, map_location="cpu")
            return "jit", _unwrap(archive.state_dict(), path)
        except RuntimeError:
            logger.debug("%s is not a loadable TorchScript archive; trying torch.load", path)
    return "torch", _unwrap(_torch_load(path), path)


# ----------------------------------------------------------------------------- conversion

def _to_timm_keys(sd: Dict[str, torch.Tensor], backbone: "ViTBackbone", path: str
                  ) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Map a state dict to timm ViT keys. Returns (format, vit_sd, extra) where ``extra`` holds
    keys of the wrapper itself (``proj.weight``, ``sie_embed``)."""
    extra: Dict[str, torch.Tensor] = {}
    if "visual.class_embedding" in sd:
        return "openai-clip", _convert_openai_clip(sd, backbone.vit, prefix="visual."), extra
    if "class_embedding" in sd and "conv1.weight" in sd:  # the visual tower saved on its own
        return "openai-clip", _convert_openai_clip(sd, backbone.vit, prefix=""), extra
    if any(k.startswith("vit.") for k in sd):  # a saved ViTBackbone
        extra = {k: v for k, v in sd.items() if not k.startswith("vit.")}
        return "backbone", {k[4:]: v for k, v in sd.items() if k.startswith("vit.")}, extra
    if "patch_embed.proj.weight" in sd or "cls_token" in sd or "pos_embed" in sd:
        return "timm", dict(sd), extra
    raise WeightsFormatError(
        f"checkpoint {path} has no ViT weights I recognise (first keys: {list(sd)[:6]}). Expected {EXPECTED_FORMATS}.")


def _source_grid(n_tokens: int, target: Tuple[int, int], src_grid: Optional[Sequence[int]],
                 path: str) -> Tuple[int, int]:
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


def _adapt(vit_sd: Dict[str, torch.Tensor], backbone: "ViTBackbone", path: str,
           src_grid: Optional[Sequence[int]], notes: List[str]) -> Dict[str, torch.Tensor]:
    """Drop heads and extra blocks, take the CLIP projection, resample the position embedding."""
    vit = backbone.vit
    out: Dict[str, torch.Tensor] = {}
    head_w, head_b = vit_sd.get("head.weight"), vit_sd.get("head.bias")
    proj = getattr(backbone.proj, "weight", None)
    if (proj is not None and head_w is not None and head_w.shape == proj.shape
            and (head_b is None or not torch.any(head_b))):
        out["proj.weight"] = head_w  # CLIP projection: timm stores it as a bias-free `head`
    elif head_w is not None:
        notes.append(f"dropped classifier head {tuple(head_w.shape)}")
    depth = len(vit.blocks)
    block_ids = {int(m.group(1)) for k in vit_sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if block_ids and max(block_ids) >= depth:
        notes.append(f"checkpoint has {max(block_ids) + 1} blocks, using the first {depth}")
    for k, v in vit_sd.items():
        if k.startswith(("head.", "pre_logits.")):
            continue
        m = re.match(r"blocks\.(\d+)\.", k)
        if m and int(m.group(1)) >= depth:
            continue
        if v.is_floating_point():
            v = v.float()  # OpenAI archives are fp16
        if k == "pos_embed":
            if v.dim() == 2:
                v = v.unsqueeze(0)
            npt = backbone.num_prefix_tokens
            old = _source_grid(v.shape[1] - npt, backbone.grid_size, src_grid, path)
            if old != backbone.grid_size:
                v = resample_abs_pos_embed(v, new_size=list(backbone.grid_size), old_size=list(old),
                                           num_prefix_tokens=npt, interpolation="bicubic", antialias=True)
                notes.append(f"pos_embed resampled {old[0]}x{old[1]} -> "
                             f"{backbone.grid_size[0]}x{backbone.grid_size[1]}")
        out["vit." + k] = v
    return out


def _check_shapes(sd: Dict[str, torch.Tensor], backbone: "ViTBackbone", path: str) -> None:
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


def _load_npz(backbone: "ViTBackbone", path: str, notes: List[str]) -> List[str]:
    """Load a JAX .npz with timm's ``_load_weights``; return the backbone keys it leaves unset."""
    vit = backbone.vit
    src_depth = _npz_depth(path)
    if src_depth > len(vit.blocks):
        notes.append(f"checkpoint has {src_depth} blocks, using the first {len(vit.blocks)}")
    try:
        _load_weights(vit, path)  # resamples pos_embed to vit.patch_embed.grid_size itself
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
    backbone: "ViTBackbone",
    source: Union[bool, str, os.PathLike],
    variant: Optional[str] = None,
    src_grid: Optional[Sequence[int]] = None,
) -> "ViTBackbone":
    """Load pretrained weights into ``backbone`` in place (and return it).

    Args:
        backbone: the target :class:`ViTBackbone`.
        source: True for the variant's published file (downloaded once to
            ``torch.hub.get_dir()/checkpoints``), or a local checkpoint path.
        variant: which published file ``True`` means; defaults to ``backbone.variant``.
        src_grid: patch grid of the checkpoint's position embedding when it is not square
            and differs in size from the backbone's (square grids are inferred).
    """
    variant = variant or backbone.variant
    if source is True:
        path = download_pretrained(variant)
    elif isinstance(source, (str, os.PathLike)) and str(source):
        path = os.fspath(source)
    else:
        raise TypeError(f"pretrained source must be True or a file path, got {source!r}")

    kind, sd = read_checkpoint(path)
    notes: List[str] = []
    if kind == "npz":
        fmt = "npz"
        missing, unexpected = _load_npz(backbone, path, notes), []
    else:
        fmt, vit_sd, extra = _to_timm_keys(sd, backbone, path)
        full = _adapt(vit_sd, backbone, path, src_grid, notes)
        for k, v in extra.items():  # wrapper keys of a saved ViTBackbone (proj, sie_embed)
            full.setdefault(k, v.float() if v.is_floating_point() else v)
        if "sie_embed" in full and (backbone.sie_embed is None or full["sie_embed"].shape != backbone.sie_embed.shape):
            notes.append("checkpoint camera embedding ignored (different num_cameras)")
            del full["sie_embed"]
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
