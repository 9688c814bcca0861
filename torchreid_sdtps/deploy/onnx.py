"""ONNX export of a trained model and its parity check with ONNX Runtime.

:func:`export_onnx` uses torch's ``torch.export``-based exporter (``dynamo=True``, the default
of torch >= 2.9; it needs ``onnxscript``): input ``images (batch, M, 3, H, W)`` float32 with a
dynamic batch, plus ``cam_label (batch,)`` int64 when the model has an SIE camera embedding;
output ``features (batch, D)`` (the eval-mode feature). The checkpoint's meta (image size,
normalisation, modalities) is stored in the ONNX ``metadata_props`` under ``torchreid_sdtps``.
One self-contained file (no external data), written atomically.

:func:`check_parity` runs PyTorch and ONNX Runtime on the same inputs: the difference of the
features of a real batch, and mAP/R1 and the ranking of the test split ranked with each.
The parity data is the checkpoint's own data set (its stored config's first target and data
root); the synthetic set only as a fallback, generated in a temporary folder, never inside the
user's data root. Tolerances are relative, never bit-equal: both run float32, but ONNX Runtime
fuses LayerNorm, GELU and attention and sums in another order, so features move by a few 1e-6
of their norm, more on another CPU or ORT build. :data:`PARITY_RTOL` bounds the max abs
difference divided by the largest feature norm of the batch; a real divergence (a wrong op, a
frozen batch size, a lost camera term) moves features by > 1e-2 of their norm. The ranking
must agree up to float32 near-ties, and mAP/R1 within :data:`PARITY_MAP_TOL`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import os.path as osp
import tempfile
from typing import Any

import numpy as np
import torch

from ..errors import SDTPSError
from ..io import atomic_path

__all__ = ["export_onnx", "OrtForward", "check_parity", "parity_data", "read_onnx_meta",
           "PARITY_RTOL", "PARITY_MAP_TOL", "META_KEY", "ParityError", "MissingDependencyError"]

logger = logging.getLogger(__name__)

#: max |torch - onnxruntime| / max feature norm accepted (see the module doc)
PARITY_RTOL = 1e-4
#: largest mAP / R1 difference (as fractions) accepted between the two rankings
PARITY_MAP_TOL = 1e-3
META_KEY = "torchreid_sdtps"
SYNTHETIC = "synthetic_msreid"


class ParityError(SDTPSError, RuntimeError):
    """ONNX Runtime's features or ranking differ from PyTorch's beyond the tolerance (the
    command exits 1: the export ran, its result is wrong)."""

    exit_code = 1


class MissingDependencyError(SDTPSError, ImportError):
    """An optional package of the ``export`` extra is not installed."""


class OnnxInputError(SDTPSError, ValueError):
    """An ONNX file or camera input that does not fit the call."""


class OnnxNotFoundError(OnnxInputError, FileNotFoundError):
    """The ONNX file does not exist."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(f"ONNX export needs '{module}': pip install 'torchreid-sdtps[export]' "
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
        raise OnnxInputError("cameras=True, but the model has no SIE camera embedding "
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
            raise OnnxNotFoundError(f"ONNX model not found: '{path}'")
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
                raise OnnxInputError(f"'{self.path}' takes camera ids (input cam_label): the model "
                                 "uses an SIE camera embedding; pass cam_ids (or export with "
                                 "cameras=False / --no-cameras)")
            feeds["cam_label"] = torch.as_tensor(cams).long().cpu().numpy()
        elif cams is not None:
            raise OnnxInputError(f"'{self.path}' was exported without the cam_label input; camera "
                             "ids cannot be used with it")
        return torch.from_numpy(self.session.run(["features"], feeds)[0])


def _rank(extractor: Any, q: tuple, g: tuple, metric: str) -> dict[str, Any]:
    from ..engine.evaluation import rank_features

    qf = extractor(q[0], cam_ids=q[3])
    gf = extractor(g[0], cam_ids=g[3])
    cmc, mAP, dist = rank_features((qf, np.asarray(q[1]), np.asarray(q[2])),
                                   (gf, np.asarray(g[1]), np.asarray(g[2])), metric, False, False)
    return {"mAP": float(mAP), "R1": float(cmc[0]), "dist": np.asarray(dist),
            "features": torch.cat([qf, gf])}


def _same_ranking(dist: np.ndarray, other: np.ndarray) -> bool:
    """Whether ``other``'s ranking sorts ``dist`` too, up to float32 rounding of distances
    (near-ties may swap; anything else is a different ranking)."""
    order = np.argsort(other, axis=1, kind="stable")
    ranked = np.take_along_axis(dist, order, axis=1)
    tol = 1e-6 * max(1.0, float(np.abs(dist).max()))
    return bool((np.diff(ranked, axis=1) >= -tol).all())


def _topk_agreement(dist: np.ndarray, other: np.ndarray, k: int) -> float:
    """Share of queries whose top-``k`` gallery set is the same under both distances."""
    k = min(k, dist.shape[1])
    a = np.argsort(dist, axis=1, kind="stable")[:, :k]
    b = np.argsort(other, axis=1, kind="stable")[:, :k]
    same = [set(x) == set(y) for x, y in zip(a.tolist(), b.tolist())]
    return float(np.mean(same)) if same else 1.0


def parity_data(meta: dict[str, Any], root: str = "", dataset: str = "") -> tuple[str, str, Any]:
    """``(dataset, root, synthetic spec)`` the parity check ranks: ``dataset``/``root`` when
    given, else the checkpoint's first test target and data root (its stored config), else
    the synthetic set."""
    from .extractor import synthetic_spec_of, train_config

    cfg = train_config(meta)
    name = dataset or (str(list(cfg.data.targets or cfg.data.sources)[0]) if cfg is not None
                       else SYNTHETIC)
    root = root or (str(cfg.data.root) if cfg is not None else "")
    return name, root, synthetic_spec_of(meta) if name == SYNTHETIC else None


def _fallback_spec(meta: dict[str, Any]) -> Any:
    """A small synthetic set the model can take: its input size, and no more cameras than its
    SIE embedding knows."""
    from ..data.synthetic import default_spec

    cams = int(meta.get("num_cameras", meta.get("model_kwargs", {}).get("num_cameras", 0)) or 0)
    return dataclasses.replace(default_spec(), num_train_ids=2, num_test_ids=10,
                               images_per_camera=2, num_cameras=min(3, cams) if cams > 1 else 3,
                               height=int(meta["height"]), width=int(meta["width"]))


def _load_split_pair(name: str, root: str, spec: Any, scratch: str, meta: dict[str, Any]
                     ) -> tuple[tuple, tuple, dict[str, Any]]:
    """Query and gallery samples of ``name`` under ``root``; the synthetic set is read where it
    already is, else generated in ``scratch`` (never in the user's data root); a real data set
    that is not there falls back to the synthetic set in ``scratch``, saying so."""
    from .. import load_plugins
    from ..data.multimodal import DatasetNotFoundError
    from ..data.samples import dataset_samples
    from ..data.synthetic import DATASET_DIR, default_spec, is_complete

    load_plugins()  # a third party's data set too
    where: dict[str, Any] = {"dataset": name, "root": root, "fallback": ""}
    if name != SYNTHETIC:
        try:
            q = dataset_samples(name, "query", root)
            g = dataset_samples(name, "gallery", root)
            return q, g, where
        except DatasetNotFoundError as exc:
            where["fallback"] = f"{name} not found under '{root}' ({exc})"
            logger.warning("parity check: %s; using the synthetic set (generated in a "
                           "temporary folder) instead", where["fallback"])
            name, spec = SYNTHETIC, _fallback_spec(meta)
    spec = spec if spec is not None else default_spec()
    if not (root and is_complete(osp.join(root, DATASET_DIR), spec)):
        where.update(generated_in_temporary_folder=True)
        root = scratch
    where.update(dataset=name, root=root)
    return (dataset_samples(name, "query", root, spec), dataset_samples(name, "gallery", root, spec),
            where)


def check_parity(extractor: Any, onnx_path: str, root: str = "", spec: Any = None,
                 metric: str = "euclidean", batch_size: int = 32, rtol: float = PARITY_RTOL,
                 dataset: str = "", map_tol: float = PARITY_MAP_TOL, topk: int = 10
                 ) -> dict[str, Any]:
    """PyTorch (``extractor``) versus ONNX Runtime (``onnx_path``) on the test split of the
    checkpoint's own data set (see :func:`parity_data`; ``dataset``/``root``/``spec``
    override it).

    Judged relative to the feature scale, never bit for bit. ``ok`` needs:

    * ``max|torch - ort| / max‖torch feature‖ <= rtol`` on a real batch (``rel_diff``) and over
      every query and gallery sample of the split (``split_rel_diff``: batch-size or
      sample-dependent faults);
    * mAP and R1 of the two rankings within ``max(map_tol, 1 / num_query)``: a float32
      near-tie may swap two neighbours, which moves one query's AP or R1 (never more).

    Reported too: the smallest cosine similarity of the batch's features, the largest distance
    difference relative to the largest distance, whether ONNX Runtime's order sorts PyTorch's
    distances up to float32 rounding (``same_ranking``) and the share of queries with identical
    top-``topk`` sets.
    """
    name, root, stored_spec = parity_data(extractor.meta, root, dataset)
    spec = spec if spec is not None else stored_spec
    ort_forward = OrtForward(onnx_path)
    ort = extractor.with_forward(ort_forward)  # same preprocessing, ORT forward
    with tempfile.TemporaryDirectory(prefix="sdtps-parity-") as scratch:
        q, g, where = _load_split_pair(name, root, spec, scratch, extractor.meta)
        cams = q[3] if "cam_label" in ort_forward.inputs else None
        n = min(batch_size, len(q[0]))
        x = torch.cat(list(extractor.batches(q[0][:n])))
        c = torch.as_tensor(cams[:n]) if cams is not None else None
        ref, got = extractor.forward(x, c), ort.forward(x, c)
        if cams is None:
            q, g = (*q[:3], None), (*g[:3], None)
        pt, rt = _rank(extractor, q, g, metric), _rank(ort, q, g, metric)
    diff = float((ref - got).abs().max())
    scale = float(ref.norm(dim=1).max())
    rel = diff / max(scale, 1e-12)
    cosine = float(torch.nn.functional.cosine_similarity(ref, got, dim=1).min())
    fpt, frt = pt.pop("features"), rt.pop("features")
    split_rel = float((fpt - frt).abs().max()) / max(float(fpt.norm(dim=1).max()), 1e-12)
    dist_pt, dist_rt = pt.pop("dist"), rt.pop("dist")
    dist_rel = float(np.abs(dist_pt - dist_rt).max()) / max(float(np.abs(dist_pt).max()), 1e-12)
    metric_tol = max(map_tol, 1.0 / max(1, len(q[0])))
    metric_diff = max(abs(pt["mAP"] - rt["mAP"]), abs(pt["R1"] - rt["R1"]))
    ok = rel <= rtol and split_rel <= rtol and metric_diff <= metric_tol
    return {"data": where, "max_abs_diff": diff, "max_feature_norm": scale,
            "rel_diff": rel, "split_rel_diff": split_rel, "rtol": rtol, "min_cosine": cosine,
            "batch": n, "num_query": len(q[0]), "num_gallery": len(g[0]),
            "torch": pt, "onnxruntime": rt, "max_metric_diff": metric_diff,
            "metric_tol": metric_tol, "dist_rel_diff": dist_rel,
            "same_ranking": _same_ranking(dist_pt, dist_rt),
            f"top{topk}_identical": _topk_agreement(dist_pt, dist_rt, topk), "ok": bool(ok)}
