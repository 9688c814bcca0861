"""Finding the published pretrained file of a backbone variant: URL, torch hub cache, download.

The download goes to a temporary file renamed into place only when complete (and hash-checked
when a digest is published), so an interrupted download never leaves a partial file behind.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ...errors import ConfigError as SDTPSConfigError
from ...errors import SDTPSError
from ...io import atomic_path

__all__ = ["PretrainedFile", "PRETRAINED_FILES", "PretrainedDownloadError", "cached_path",
           "download_pretrained"]

logger = logging.getLogger(__name__)


class PretrainedDownloadError(SDTPSError, RuntimeError):
    """The published file could not be fetched; the message says where to put it by hand."""


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


def _published(variant: str) -> PretrainedFile:
    try:
        return PRETRAINED_FILES[variant]
    except KeyError:
        raise SDTPSConfigError(
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
