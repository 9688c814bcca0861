"""``FeatureExtractor``: features of multi-modal samples from a trained checkpoint.

torchreid's ``torchreid.utils.FeatureExtractor`` takes one image per sample and a model name;
this one takes M-modality samples (RGB/NI/TI triples) and rebuilds the model from what the
checkpoint carries (its ``"meta"`` entry, written by :class:`ImageSDTPSEngine` when the
training built it): model name and options, classes, SIE cameras, image size, normalisation,
test feature. Checkpoints without it (torchreid's stock engines) need the training config
(``config_file`` + ``opts``); a missing piece raises naming it.

Preprocessing is the evaluation's: each image goes through torchreid's test transform
(resize, to tensor, normalise) as in :class:`MultiModalImageDataset`, and a modality given as
``None`` is zeroed after normalisation with :func:`zero_modalities`, the function the
missing-modality evaluation uses.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import compat, config
from ..checkpoint import (
    CheckpointError,
    load_into_model,
    read_checkpoint,
    state_dict_of,
)
from ..checkpoint import checkpoint_meta as checkpoint_meta_of
from ..choices import MODALITIES
from ..errors import SDTPSError, UnknownNameError
from ..utils.modalities import zero_modalities

__all__ = ["FeatureExtractor", "ExtractionError", "model_meta", "train_config",
           "synthetic_spec_of", "load_model", "load_meta", "Preprocessor", "MODALITIES"]

logger = logging.getLogger(__name__)



class ExtractionError(SDTPSError, ValueError):
    """A sample, camera id or option the extractor cannot use (names what and why)."""


# ----------------------------------------------------------------------------- checkpoint meta

#: the meta a checkpoint carries (:func:`torchreid_sdtps.config.make_meta`); old names
model_meta = checkpoint_meta = config.make_meta


def _shape_of(state: dict[str, torch.Tensor], suffix: str) -> torch.Size | None:
    keys = sorted(k for k in state if k.endswith(suffix))
    return state[keys[0]].shape if keys else None


def _config_of(meta: dict[str, Any] | None, config_file: str, opts: Sequence[str]) -> Any:
    """The training config stored in ``meta`` (else the defaults), then ``config_file`` and
    ``opts`` on top: overrides change the checkpoint's config, they do not replace it."""
    stored = train_config(meta) if meta else None
    if stored is None:
        return config.load_config(config_file, list(opts))
    cfg = stored.clone()
    cfg.defrost()
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def train_config(meta: dict[str, Any] | None) -> Any:
    """The training config stored in a checkpoint's meta (None without one)."""
    if not meta or "config" not in meta:
        return None
    import yaml

    return config.get_default_config().merge_from_dict(yaml.safe_load(meta["config"]),
                                                      source="the checkpoint's meta")


def synthetic_spec_of(meta: dict[str, Any]) -> Any:
    """The synthetic spec the checkpoint was trained with (None: the package default)."""
    cfg = train_config(meta)
    return config.synthetic_spec(cfg) if cfg is not None else None


def load_meta(checkpoint: str = "", config_file: str = "", opts: Sequence[str] = ()
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(meta, checkpoint dict)`` of ``checkpoint`` (read with
    :func:`torchreid_sdtps.checkpoint.read_checkpoint`): its ``"meta"`` entry, or, when a
    config or overrides are given, a meta rebuilt from the checkpoint's training config with
    ``config_file`` + ``opts`` on top (classes and SIE cameras read off the weights' shapes
    when the checkpoint has no meta). Without a checkpoint (random weights, e.g. for a
    benchmark), ``meta`` comes from the config and the dict is None."""
    ckpt = read_checkpoint(checkpoint) if checkpoint else None
    stored = checkpoint_meta_of(ckpt) if ckpt is not None else None
    if stored is not None and not config_file and not opts:
        return stored, ckpt
    if stored is None and ckpt is not None and not config_file and not opts:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' carries no 'meta' entry (model name, image size, "
            "normalisation), e.g. one written by torchreid's stock engines; pass the training "
            "config (config_file=/--config-file and its overrides) so the model can be rebuilt")
    cfg = _config_of(stored, config_file, opts)
    if stored is not None:
        num_classes = int(stored["num_classes"])
        num_cameras = int(stored.get("num_cameras",
                                     stored["model_kwargs"].get("num_cameras", 0)) or 0)
    else:
        num_classes, num_cameras = 1, 0
        if ckpt is not None:
            state = state_dict_of(ckpt, f"checkpoint '{checkpoint}'")
            cls_shape = _shape_of(state, "classifier.weight")
            if cls_shape is None:
                raise CheckpointError(f"checkpoint '{checkpoint}': no '*classifier.weight' in "
                                      "its state dict, cannot tell the number of training "
                                      "identities")
            num_classes = int(cls_shape[0])
            sie = _shape_of(state, "sie_embed")
            num_cameras = int(sie[0]) if sie is not None else 0
    return config.make_meta(cfg, num_classes, num_cameras), ckpt


def load_model(checkpoint: str = "", config_file: str = "", opts: Sequence[str] = ()
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The registered model of ``checkpoint`` (see :func:`load_meta`) with its weights loaded
    strictly (:func:`torchreid_sdtps.checkpoint.load_into_model`), in eval mode on the CPU;
    returns ``(model, meta)``."""
    import torchreid_sdtps

    torchreid_sdtps.load_plugins()
    meta, ckpt = load_meta(checkpoint, config_file, opts)
    factory = compat.model_factory().get(meta["model_name"])
    if factory is None:
        raise UnknownNameError(f"model '{meta['model_name']}' of '{checkpoint or config_file}' "
                               f"is not registered; registered models: "
                               f"{sorted(compat.model_factory())}")
    kwargs = dict(meta["model_kwargs"], pretrained=False, loss="softmax")
    kwargs["img_size"] = tuple(kwargs.get("img_size", (meta["height"], meta["width"])))
    model = factory(num_classes=meta["num_classes"], **kwargs)
    if checkpoint:  # every parameter and buffer, same shapes; the error names the file
        load_into_model(model, ckpt, strict=True, model_name=meta["model_name"],
                        source_name=checkpoint)  # what load_meta read: one read per file
    return model.eval(), meta


# ----------------------------------------------------------------------------- preprocessing

Sample = Sequence[Any]  # one entry per modality: path, PIL image, HxWx3 array, or None


class Preprocessor:
    """Sample -> normalised ``(M, 3, H, W)`` tensor and the indices of its ``None`` modalities,
    with torchreid's test transform (the evaluation's preprocessing)."""

    def __init__(self, height: int, width: int, norm_mean: Sequence[float],
                 norm_std: Sequence[float], modalities: Sequence[str] = MODALITIES) -> None:
        self.height, self.width = int(height), int(width)
        self.modalities = tuple(modalities)
        with contextlib.redirect_stdout(io.StringIO()):  # torchreid prints its transforms
            _, self.transform = compat.build_transforms(
                self.height, self.width, transforms=None, norm_mean=list(norm_mean),
                norm_std=list(norm_std))

    def image(self, item: Any, modality: str, where: str) -> Image.Image:
        """One modality as an RGB PIL image (paths are read as the data sets read them)."""
        from ..data.multimodal import read_image

        if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
            return read_image(str(item), f"{where} {modality}")
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        if isinstance(item, np.ndarray):
            arr = item
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
                raise ExtractionError(f"{where} {modality}: array of shape {arr.shape}; expected an "
                                 "image H x W x 3 (RGB) or H x W, dtype uint8")
            if arr.dtype != np.uint8:
                raise ExtractionError(f"{where} {modality}: array dtype {arr.dtype}; expected uint8 "
                                 "(0..255), as PIL and cv2 load images")
            return Image.fromarray(arr).convert("RGB")
        raise TypeError(f"{where} {modality}: got {type(item).__name__}; expected a path, a PIL "
                        "image, a uint8 array or None (missing modality)")

    def __call__(self, sample: Sample, where: str = "sample") -> tuple[torch.Tensor, tuple[int, ...]]:
        num = len(self.modalities)
        if isinstance(sample, (str, bytes, Image.Image, np.ndarray)) or len(sample) != num:
            got = 1 if isinstance(sample, (str, bytes, Image.Image, np.ndarray)) else len(sample)
            raise ExtractionError(f"{where} has {got} image(s); expected {num}, one per modality "
                             f"{self.modalities} (pass None for a missing modality)")
        missing = tuple(i for i, x in enumerate(sample) if x is None)
        if len(missing) == num:
            raise ExtractionError(f"{where}: every modality is None; at least one image is needed")
        imgs = {i: self.image(x, m, where) for i, (x, m) in enumerate(zip(sample, self.modalities))
                if x is not None}
        size = imgs[min(imgs)].size  # as load_modalities: modalities take the first one's size
        imgs = {i: im if im.size == size else im.resize(size, Image.Resampling.BILINEAR)
                for i, im in imgs.items()}
        shape = (3, self.height, self.width)
        out = torch.stack([self.transform(imgs[i]) if i in imgs else torch.zeros(shape)
                           for i in range(num)])
        return zero_modalities(out[None], missing)[0], missing


# ----------------------------------------------------------------------------- extractor

def _is_sample(x: Any) -> bool:
    """A single sample is a sequence of M non-sequence items (paths, images, arrays, None)."""
    return isinstance(x, (tuple, list)) and all(
        e is None or isinstance(e, (str, bytes, Image.Image, np.ndarray))
        or hasattr(e, "__fspath__") for e in x)


class FeatureExtractor:
    """Features of multi-modal samples, batched, in eval mode, without gradients.

    Args:
        model_path: checkpoint (torchreid format; its ``"meta"`` rebuilds the model). Empty:
            random weights from ``config_file`` (benchmarks).
        config_file, opts: the training config, for checkpoints without ``"meta"``.
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        batch_size: samples per forward pass.
        normalize: L2-normalise the returned features.
        forward: replaces the PyTorch forward, ``(imgs (B,M,3,H,W), cams (B,) or None) -> (B,D)``
            (e.g. an ONNX Runtime session, :class:`torchreid_sdtps.deploy.onnx.OrtForward`).
        verbose: show a progress bar over batches.

    Call it with one sample (a sequence of M paths / PIL images / uint8 arrays, ``None`` for a
    missing modality), a list of samples, or a preprocessed ``(B, M, 3, H, W)`` (or
    ``(M, 3, H, W)``) tensor; ``cam_ids`` optional (one per sample). Returns ``(B, D)``.
    """

    def __init__(self, model_path: str = "", config_file: str = "", opts: Sequence[str] = (),
                 device: str | None = None, batch_size: int = 32, normalize: bool = False,
                 forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
                 verbose: bool = False) -> None:
        if not model_path and not config_file and not opts:
            raise ExtractionError("FeatureExtractor needs model_path (a checkpoint) or a config "
                             "(config_file / opts) to build the model from")
        if batch_size < 1:
            raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.meta = load_model(model_path, config_file, opts)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size, self.normalize, self.verbose = int(batch_size), bool(normalize), verbose
        self.modalities = tuple(self.meta.get("modalities", MODALITIES))
        self.preprocess = Preprocessor(self.meta["height"], self.meta["width"],
                                       self.meta["norm_mean"], self.meta["norm_std"],
                                       self.modalities)
        self.num_cameras = int(self.meta["model_kwargs"].get("num_cameras", 0) or 0)
        self._forward = forward

    def with_forward(self, forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
                     ) -> FeatureExtractor:
        """A copy with the same model and preprocessing whose batches go through ``forward``
        (e.g. an ONNX Runtime session)."""
        other = copy.copy(self)
        other._forward = forward
        return other

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(M, 3, H, W)`` of one preprocessed sample."""
        return (len(self.modalities), 3, self.preprocess.height, self.preprocess.width)

    def _check_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x[None]
        if x.dim() != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ExtractionError(f"input tensor of shape {tuple(x.shape)}; expected (B, "
                             f"{', '.join(map(str, self.input_shape))}) = (B, M, 3, H, W), "
                             "normalised like the training data")
        return x.float()

    def _cams(self, cam_ids: Any, batch: int) -> torch.Tensor | None:
        if cam_ids is None:
            return None
        if not self.num_cameras:
            raise ExtractionError(f"cam_ids given, but model '{self.meta['model_name']}' has no SIE "
                             "camera embedding (num_cameras=0): camera ids would be ignored")
        cams = torch.as_tensor(cam_ids, dtype=torch.long).reshape(-1)
        if cams.numel() != batch:
            raise ExtractionError(f"cam_ids has {cams.numel()} entries for {batch} sample(s)")
        if cams.min() < 0 or cams.max() >= self.num_cameras:
            raise ExtractionError(f"cam_ids must be in [0, {self.num_cameras - 1}] (the model's "
                             f"{self.num_cameras} SIE cameras), got {cams.tolist()}")
        return cams

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor, cams: torch.Tensor | None) -> torch.Tensor:
        """One batch through the model (or the ``forward`` given); float32 on the CPU."""
        if self._forward is not None:
            return torch.as_tensor(self._forward(imgs, cams)).float()
        self.model.eval()
        cams = cams.to(self.device) if cams is not None else None
        return self.model(imgs.to(self.device), cam_label=cams).float().cpu()

    def batches(self, samples: Any) -> Iterator[torch.Tensor]:
        """Preprocessed ``(b, M, 3, H, W)`` chunks of ``samples`` (tensor or list of samples)."""
        if isinstance(samples, torch.Tensor):
            x = self._check_tensor(samples)
            yield from x.split(self.batch_size)
            return
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            yield torch.stack([self.preprocess(s, f"sample {start + i}")[0]
                               for i, s in enumerate(chunk)])

    def __call__(self, input: Any, cam_ids: Any = None) -> torch.Tensor:
        if isinstance(input, torch.Tensor):
            samples: Any = input if input.dim() != 4 else input[None]
        elif _is_sample(input):
            samples = [input]
        elif isinstance(input, (list, tuple)):
            samples = list(input)
            if not samples:
                raise ExtractionError("no sample given (empty list)")
        else:
            raise TypeError(f"FeatureExtractor input: got {type(input).__name__}; expected a "
                            "sample (sequence of M images), a list of samples or a tensor")
        num = samples.shape[0] if isinstance(samples, torch.Tensor) else len(samples)
        cams = self._cams(cam_ids, num)
        feats, done = [], 0
        chunks: Any = self.batches(samples)
        if self.verbose:
            from tqdm import tqdm

            chunks = tqdm(chunks, total=-(-num // self.batch_size), desc="extract", unit="batch")
        for x in chunks:
            c = cams[done:done + x.shape[0]] if cams is not None else None
            feats.append(self.forward(x, c))
            done += x.shape[0]
        out = torch.cat(feats)
        return F.normalize(out, p=2, dim=1) if self.normalize else out
