"""ONNX export of a trained model and its parity check with ONNX Runtime.

:func:`export_onnx` uses torch's ``torch.export``-based exporter (``dynamo=True``, the default
of torch >= 2.9; it needs ``onnxscript``): input ``images (batch, M, 3, H, W)`` float32 with a
dynamic batch, plus ``cam_label (batch,)`` int64 when the model has an SIE camera embedding;
output ``features (batch, D)`` (the eval-mode feature). The checkpoint's meta (image size,
normalisation, modalities) is stored in the ONNX ``metadata_props`` under ``torchreid_sdtps``.
One self-contained file (no external data), written atomically.

:func:`check_parity` runs PyTorch and ONNX Runtime on the same inputs: the max abs difference
of the features of a real batch, and mAP/R1 of the synthetic test split ranked with each.
Tolerance :data:`PARITY_ATOL`: both run float32; ONNX Runtime fuses LayerNorm, GELU and
attention and sums in another order, which moves each feature by ~1e-6 (features are O(1)
after the BNNeck). 1e-4 leaves two orders of margin for deeper models while still catching any
real divergence (a wrong op, a frozen batch size, a lost camera term moves features by >1e-2).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Any

import numpy as np
import torch

from ..io import atomic_path

__all__ = ["export_onnx", "OrtForward", "check_parity", "read_onnx_meta", "PARITY_ATOL",
           "META_KEY"]

logger = logging.getLogger(__name__)

#: max abs feature difference accepted between PyTorch and ONNX Runtime (see the module doc)
PARITY_ATOL = 1e-4
META_KEY = "torchreid_sdtps"


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"ONNX export needs '{module}': pip install 'torchreid-sdtps[export]' "
                          "(onnx, onnxruntime, onnxscript)") from exc


def _uses_cameras(model: torch.nn.Module) -> bool:
    backbone = getattr(model, "backbone", None)
    return int(getattr(backbone, "num_cameras", 0) or 0) > 0


def export_onnx(model: torch.nn.Module, path: str, meta: dict[str, Any],
                cameras: bool | None = None, opset: int | None = None) -> str:
    """Export ``model`` (eval mode) to ``path``; ``cameras=None`` adds the ``cam_label`` input
    exactly when the model has an SIE camera embedding. Returns ``path``."""
    _require("onnx")
    _require("onnxscript")
    import onnx

    use_cams = _uses_cameras(model) if cameras is None else bool(cameras)
    if use_cams and not _uses_cameras(model):
        raise ValueError("cameras=True, but the model has no SIE camera embedding "
                         "(num_cameras=0): there is no camera input to export")
    model = model.eval().cpu()
    shape = (2, len(meta["modalities"]), 3, int(meta["height"]), int(meta["width"]))
    args: tuple = (torch.zeros(shape),)
    batch = torch.export.Dim("batch", min=1)
    dynamic: tuple = ({0: batch},)
    names = ["images"]
    if use_cams:
        args += (torch.zeros(2, dtype=torch.long),)
        dynamic += ({0: batch},)
        names.append("cam_label")
    out = io.StringIO()
    with atomic_path(path, suffix=".onnx") as tmp:
        with torch.no_grad(), contextlib.redirect_stdout(out):  # the exporter prints progress
            torch.onnx.export(model, args, tmp, dynamo=True, input_names=names,
                              output_names=["features"], dynamic_shapes=dynamic,
                              opset_version=opset, external_data=False)
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps({k: v for k, v in meta.items()})
        onnx.save(proto, tmp)
    logger.debug("%s", out.getvalue())
    return path


def read_onnx_meta(path: str) -> dict[str, Any]:
    """The meta :func:`export_onnx` stored in ``path`` (``{}`` if none)."""
    onnx = _require("onnx")
    proto = onnx.load(path, load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            return json.loads(entry.value)
    return {}


class OrtForward:
    """An ONNX Runtime session called like the model: ``(imgs (B,M,3,H,W), cams) -> (B, D)``.

    ``threads``: intra-op threads (default: ORT's choice; set it to compare with torch's).
    """

    def __init__(self, path: str, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: '{path}'")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, imgs: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"images": imgs.detach().cpu().float().numpy()}
        if "cam_label" in self.inputs:
            if cams is None:
                raise ValueError(f"'{self.path}' takes camera ids (input cam_label): the model "
                                 "uses an SIE camera embedding; pass cam_ids (or export with "
                                 "cameras=False / --no-cameras)")
            feeds["cam_label"] = torch.as_tensor(cams).long().cpu().numpy()
        elif cams is not None:
            raise ValueError(f"'{self.path}' was exported without the cam_label input; camera "
                             "ids cannot be used with it")
        return torch.from_numpy(self.session.run(["features"], feeds)[0])


def _rank(extractor: Any, q: tuple, g: tuple, metric: str) -> dict[str, float]:
    from ..engine.evaluation import rank_features

    qf = extractor(q[0], cam_ids=q[3])
    gf = extractor(g[0], cam_ids=g[3])
    cmc, mAP, dist = rank_features((qf, np.asarray(q[1]), np.asarray(q[2])),
                                   (gf, np.asarray(g[1]), np.asarray(g[2])), metric, False, False)
    return {"mAP": float(mAP), "R1": float(cmc[0]), "dist": dist}


def _same_ranking(dist: np.ndarray, other: np.ndarray) -> bool:
    """Whether ``other``'s ranking sorts ``dist`` too, up to float32 rounding of distances
    (near-ties may swap; anything else is a different ranking)."""
    order = np.argsort(other, axis=1, kind="stable")
    ranked = np.take_along_axis(dist, order, axis=1)
    tol = 1e-6 * max(1.0, float(np.abs(dist).max()))
    return bool((np.diff(ranked, axis=1) >= -tol).all())


def check_parity(extractor: Any, onnx_path: str, root: str, spec: Any = None,
                 metric: str = "euclidean", batch_size: int = 32,
                 atol: float = PARITY_ATOL) -> dict[str, Any]:
    """PyTorch (``extractor``) versus ONNX Runtime (``onnx_path``) on the synthetic test split
    under ``root``, generated from ``spec`` when missing (default: the spec the checkpoint was
    trained with, else the package default).

    Returns ``{"max_abs_diff", "atol", "batch", "torch": {"mAP", "R1"}, "onnxruntime": {...},
    "same_ranking", "ok"}``; ``ok`` needs the difference within ``atol``, the same mAP and R1,
    and ONNX Runtime's ranking to sort PyTorch's distances (up to float32 near-ties).
    """
    from .features import dataset_samples, synthetic_spec_of

    if spec is None:
        spec = synthetic_spec_of(extractor.meta)
    ort_forward = OrtForward(onnx_path)
    ort = extractor.with_forward(ort_forward)  # same preprocessing, ORT forward
    q = dataset_samples("synthetic_msreid", "query", root, spec)
    g = dataset_samples("synthetic_msreid", "gallery", root, spec)
    cams = q[3] if ("cam_label" in ort_forward.inputs) else None
    n = min(batch_size, len(q[0]))
    x = torch.cat(list(extractor.batches(q[0][:n])))
    c = torch.as_tensor(cams[:n]) if cams is not None else None
    diff = float((extractor.forward(x, c) - ort.forward(x, c)).abs().max())
    if cams is None:
        q, g = (*q[:3], None), (*g[:3], None)
    pt, rt = _rank(extractor, q, g, metric), _rank(ort, q, g, metric)
    same = _same_ranking(pt.pop("dist"), rt.pop("dist"))
    ok = diff <= atol and same and pt == rt
    return {"max_abs_diff": diff, "atol": atol, "batch": n, "num_query": len(q[0]),
            "num_gallery": len(g[0]), "torch": pt, "onnxruntime": rt, "same_ranking": same,
            "ok": bool(ok)}
