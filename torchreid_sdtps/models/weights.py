"""Pretrained weights for a :class:`~torchreid_sdtps.models.backbone.ViTBackbone`.

``load_pretrained(backbone, source, variant)`` finds a checkpoint (the variant's published
file, downloaded once into the torch hub cache, or a local path), reads it, converts it to
timm's key names and loads it. Key conversion is timm's public
``vision_transformer.checkpoint_filter_fn`` (OpenAI CLIP, DINOv2, ... layouts) and .npz files are
loaded by timm's ``VisionTransformer.load_pretrained``; this module only adds what timm does not
do for a re-id backbone:

* finding the file (published URL + torch hub cache, atomic download) and reading every
  published container (OpenAI TorchScript archives, wrapped/``module.``-prefixed state dicts,
  the CLIP visual tower saved on its own, a saved ``ViTBackbone``);
* resampling the position embedding from a *non-square* source grid (``src_grid``; timm
  assumes a square or its pretrained config's grid);
* keeping the CLIP projection (timm's bias-free ``head``) as the backbone's ``proj``, dropping
  classifier heads and blocks beyond the backbone's depth, and checking shapes with errors
  that name the file.

``torch.load(weights_only=False)`` (a file that pickles Python objects) runs code from the
file; it is used only when the caller opts in with ``allow_unsafe_pickle=True`` or the
environment variable ``TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE=1``.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ..dist import is_main_process
from ..io import atomic_path

__all__ = [
    "PretrainedFile", "PRETRAINED_FILES", "PretrainedDownloadError", "WeightsFormatError",
    "UnsafePickleError", "UNSAFE_PICKLE_ENV", "cached_path", "download_pretrained",
    "read_checkpoint", "load_pretrained",
]

logger = logging.getLogger(__name__)

#: environment variable that opts in to ``torch.load(weights_only=False)`` (value ``1``)
UNSAFE_PICKLE_ENV = "TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE"

EXPECTED_FORMATS = (
    "an OpenAI CLIP TorchScript archive or state dict (visual.* keys), a timm/PyTorch state dict "
    "(.pth/.pt/.bin; optionally under 'state_dict'/'model', 'module.' prefixes allowed), "
    "or a JAX/timm .npz checkpoint (augreg)")


@dataclass(frozen=True)
class PretrainedFile:
    """The published checkpoint of one variant: where it is fetched from and what it holds."""

    url: str
    sha256: str | None = None  # full digest when the publisher gives one (OpenAI puts it in the URL)
    description: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# Sources: OpenAI CLIP `clip/clip.py::_MODELS["ViT-B/16"]`; timm 1.0 `vision_transformer.py`
# default_cfgs `vit_base_patch16_224.augreg_in21k_ft_in1k` / `vit_tiny_patch16_224.augreg_in21k_ft_in1k`.
PRETRAINED_FILES: dict[str, PretrainedFile] = {
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


class UnsafePickleError(WeightsFormatError):
    """A checkpoint needs ``torch.load(weights_only=False)`` and the caller did not opt in."""


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

def _zip_names(path: str) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _unsafe_pickle_allowed(allow: bool | None) -> bool:
    """The explicit argument wins; else the environment variable :data:`UNSAFE_PICKLE_ENV`."""
    if allow is not None:
        return bool(allow)
    value = os.environ.get(UNSAFE_PICKLE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"environment variable {UNSAFE_PICKLE_ENV}={value!r}: expected 1/true/yes or 0/false/no")


def _torch_load(path: str, allow_unsafe_pickle: bool | None = None) -> object:
    """``torch.load`` with ``weights_only=True``; ``weights_only=False`` only when opted in."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as safe_err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(safe_err))
        if found is None:  # not a pickle of Python objects: a file torch cannot read
            raise WeightsFormatError(
                f"cannot read checkpoint {path}: {type(safe_err).__name__}: {str(safe_err)[:300]}. "
                f"Expected {EXPECTED_FORMATS}.") from safe_err
        if not _unsafe_pickle_allowed(allow_unsafe_pickle):
            raise UnsafePickleError(
                f"checkpoint {path} pickles Python objects besides tensors, so reading it needs "
                "torch.load(weights_only=False), which can run arbitrary code from the file. If you "
                "trust the file, opt in with load_pretrained(..., allow_unsafe_pickle=True) / "
                f"build_backbone(..., allow_unsafe_pickle=True) or set {UNSAFE_PICKLE_ENV}=1; or "
                f"re-save just its state dict. (It pickles {found.group(1)}.)") from safe_err
    except Exception as safe_err:  # noqa: BLE001 - not a checkpoint torch can read at all
        raise WeightsFormatError(
            f"cannot read checkpoint {path}: {type(safe_err).__name__}: {str(safe_err)[:300]}. "
            f"Expected {EXPECTED_FORMATS}.") from safe_err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise WeightsFormatError(f"cannot read checkpoint {path} even with weights_only=False: "
                                 f"{type(e).__name__}: {str(e)[:300]}. Expected {EXPECTED_FORMATS}.") from e
    logger.warning("%s was loaded with torch.load(weights_only=False) as opted in (allow_unsafe_pickle)", path)
    return obj


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
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


def read_checkpoint(path: str, allow_unsafe_pickle: bool | None = None
                    ) -> tuple[str, dict[str, torch.Tensor] | None]:
    """Read ``path``; return ``("npz", None)`` or ``(kind, state_dict)`` with kind "jit"/"torch".

    TorchScript archives (the format OpenAI publishes CLIP in) are read with ``torch.jit.load``,
    whose restricted unpickler only rebuilds TorchScript modules; other files with
    ``torch.load(weights_only=True)`` unless ``allow_unsafe_pickle`` (see :func:`load_pretrained`).
    """
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
    return "torch", _unwrap(_torch_load(path, allow_unsafe_pickle), path)


# ----------------------------------------------------------------------------- conversion

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

    kind, sd = read_checkpoint(path, allow_unsafe_pickle)
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
