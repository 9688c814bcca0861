"""DeMo's training image pipeline (``data.transform_style demo``), built from torchvision and
timm pieces; torchreid's ``build_transforms`` keeps serving ``data.transform_style torchreid``.

DeMo (``data/datasets/make_dataloader.py``)::

    Resize(size, bicubic) -> RandomHorizontalFlip(p) -> Pad(pad) -> RandomCrop(size)
    -> ToTensor -> Normalize(mean, std) -> RandomErasing(p, mode="pixel", max_count=1)

``RandomErasing`` is timm's (DeMo carries a copy of it): the erased box is filled with per-pixel
normal noise, not torchreid's mean colour. Test images keep torchreid's transform (bilinear
resize + the same normalisation), as DeMo's ``val_transforms`` do.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torchvision.transforms as T

from ..errors import ConfigError

__all__ = ["DEMO_TRANSFORMS", "build_demo_train_transform"]

#: the ``data.transforms`` names the DeMo pipeline understands (and what each turns on)
DEMO_TRANSFORMS: dict[str, str] = {
    "random_flip": "RandomHorizontalFlip(flip_prob)",
    "random_crop": "Pad(pad) + RandomCrop(height, width)",
    "random_erase": "timm RandomErasing(erase_prob, mode='pixel', max_count=1)",
}


def build_demo_train_transform(height: int, width: int, transforms: Sequence[str],
                               norm_mean: Sequence[float], norm_std: Sequence[float],
                               flip_prob: float = 0.5, pad: int = 10,
                               erase_prob: float = 0.5) -> Any:
    """DeMo's training transform for one PIL image; ``transforms`` picks the random steps."""
    from timm.data.random_erasing import RandomErasing

    unknown = sorted(set(transforms) - set(DEMO_TRANSFORMS))
    if unknown:
        raise ConfigError(f"data.transforms {unknown} have no DeMo-style version; with "
                         f"data.transform_style demo use a subset of {sorted(DEMO_TRANSFORMS)}")
    for name, value in (("flip_prob", flip_prob), ("erase_prob", erase_prob)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{name} must be a probability in [0, 1], got {value}")
    if pad < 0:
        raise ConfigError(f"data.pad must be >= 0, got {pad}")
    size = (int(height), int(width))
    steps: list[Any] = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)]
    if "random_flip" in transforms:
        steps.append(T.RandomHorizontalFlip(p=flip_prob))
    if "random_crop" in transforms:
        steps += [T.Pad(pad), T.RandomCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean=list(norm_mean), std=list(norm_std))]
    if "random_erase" in transforms:
        steps.append(RandomErasing(probability=erase_prob, mode="pixel", max_count=1,
                                   device="cpu"))
    return T.Compose(steps)
