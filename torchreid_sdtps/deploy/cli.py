"""The logic of ``tools/extract.py``, ``tools/search.py`` and ``tools/export.py``.

Each ``main_*(argv)`` parses its arguments, does the work and returns a summary dict;
:func:`cli` wraps one for a console script (errors -> one line on stderr, exit 2; a failed
parity check exits 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os.path as osp
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SDTPSError
from ..io import write_json
from .features import (
    METRICS,
    dataset_samples,
    extract_samples,
    folder_samples,
    format_search,
    load_features,
    save_features,
    search,
    synthetic_spec_of,
    train_config,
)

__all__ = ["main_extract", "main_search", "main_export", "cli", "ParityError"]

logger = logging.getLogger(__name__)


class ParityError(SDTPSError, RuntimeError):
    """ONNX Runtime's features or ranking differ from PyTorch's beyond the tolerance."""


def _model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--weights", required=required, default="",
                        help="checkpoint (model.pth.tar-N of tools/train.py)")
    parser.add_argument("--config-file", default="",
                        help="training config, for checkpoints without meta (stock engines)")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if present)")
    parser.add_argument("--batch-size", type=int, default=32)


def _extractor(args: argparse.Namespace, **kwargs: Any) -> Any:
    from ..utils.feature_extractor import FeatureExtractor

    return FeatureExtractor(args.weights, config_file=args.config_file, opts=args.opts,
                            device=args.device, batch_size=args.batch_size, **kwargs)


def _root(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    cfg = train_config(meta)
    return args.root or (str(cfg.data.root) if cfg is not None else "reid-data")


# ----------------------------------------------------------------------------- extract

def main_extract(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """A data set split, or a folder of RGB/NI/TI triples, to a feature file."""
    parser = argparse.ArgumentParser(
        prog="tools/extract.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Extract multi-modal features to a file (features, ids, cameras, paths)")
    _model_args(parser)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered data set name, e.g. rgbnt201")
    src.add_argument("--folder", help="folder with one sub-folder per modality (same names)")
    parser.add_argument("--split", default="query", choices=("train", "query", "gallery"))
    parser.add_argument("--root", default="", help="data root (default: the checkpoint's)")
    parser.add_argument("--modality-dirs", nargs="+", default=None,
                        help="sub-folders of --folder, in modality order (default: the names)")
    parser.add_argument("--cam", type=int, default=None,
                        help="camera id of every --folder sample (SIE models)")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the features")
    parser.add_argument("--onnx", default="", help="run this exported model with ONNX Runtime")
    parser.add_argument("-o", "--output", required=True, help="feature file to write (.pt)")
    args = parser.parse_args(argv)
    fx = _extractor(args, normalize=args.normalize, verbose=True)
    use_cams = bool(fx.num_cameras)
    if args.onnx:
        from .onnx import OrtForward

        ort = OrtForward(args.onnx)
        fx = fx.with_forward(ort)
        use_cams = use_cams and "cam_label" in ort.inputs
    info = {"weights": args.weights, "model": fx.meta["model_name"], "normalized": args.normalize,
            "backend": "onnxruntime" if args.onnx else "torch"}
    if args.dataset:
        paths, pids, camids, cams = dataset_samples(args.dataset, args.split,
                                                    _root(args, fx.meta),
                                                    synthetic_spec_of(fx.meta))
        info.update(dataset=args.dataset, split=args.split)
        fs = extract_samples(fx, paths, pids, camids, cams if use_cams else (), info)
    else:
        dirs = args.modality_dirs or list(fx.modalities)
        paths = folder_samples(args.folder, dirs, fx.modalities)
        cams = [args.cam] * len(paths) if args.cam is not None else ()
        fs = extract_samples(fx, paths, cam_labels=cams, info=dict(info, folder=args.folder))
    save_features(fs, args.output)
    print(f"{len(fs)} samples x {fs.features.shape[1]} features -> {args.output}")
    return {"output": args.output, "num": len(fs), "dim": int(fs.features.shape[1])}


# ----------------------------------------------------------------------------- search

def main_search(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Queries (a feature file, or one sample's images) against a gallery feature file."""
    parser = argparse.ArgumentParser(
        prog="tools/search.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Search queries in a gallery feature file; top-k table and JSON")
    parser.add_argument("--gallery", required=True, help="gallery feature file")
    q = parser.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="query feature file")
    q.add_argument("--images", nargs="+", help="one query sample: one image per modality "
                   "('none' for a missing one); needs --weights")
    _model_args(parser, required=False)
    parser.add_argument("--cam", type=int, default=None, help="camera id of --images")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--metric", default="euclidean", choices=METRICS)
    parser.add_argument("--threshold", type=float, default=None,
                        help="distance above which a gallery entry is no match")
    parser.add_argument("--json", default="", help="write the results here (JSON)")
    args = parser.parse_args(argv)
    gallery = load_features(args.gallery)
    if args.query:
        query = load_features(args.query)
    else:
        if not args.weights:
            parser.error("--images needs --weights (the model that extracted the gallery)")
        fx = _extractor(args, normalize=bool(gallery.info.get("normalized", False)))
        sample = tuple(None if p.lower() == "none" else p for p in args.images)
        cams = [args.cam] if args.cam is not None else None
        query = extract_samples(fx, [sample], cam_labels=cams or ())
        query.paths = [tuple(str(p) for p in args.images)]
    results = search(query, gallery, topk=args.topk, metric=args.metric,
                     threshold=args.threshold)
    print(format_search(results, args.metric))
    if args.json:
        write_json({"gallery": args.gallery, "metric": args.metric, "topk": args.topk,
                    "threshold": args.threshold, "results": results}, args.json)
    return {"results": results, "json": args.json}


# ----------------------------------------------------------------------------- export

def main_export(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """ONNX export of a checkpoint, then the ONNX Runtime parity check."""
    from .onnx import PARITY_ATOL, check_parity, export_onnx

    parser = argparse.ArgumentParser(
        prog="tools/export.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Export a checkpoint to ONNX and check it against PyTorch")
    _model_args(parser)
    parser.add_argument("-o", "--output", default="", help="ONNX file (default: beside "
                        "the checkpoint, .onnx)")
    parser.add_argument("--no-cameras", action="store_true",
                        help="export without the cam_label input (SIE term left out)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (exporter default)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")
    parser.add_argument("--root", default="", help="where the synthetic parity data lives "
                        "(default: the checkpoint's data root)")
    parser.add_argument("--atol", type=float, default=PARITY_ATOL,
                        help="max abs feature difference accepted")
    args = parser.parse_args(argv)
    args.device = "cpu"
    fx = _extractor(args)
    output = args.output or osp.splitext(args.weights)[0] + ".onnx"
    if output == args.weights:
        output += ".onnx"
    export_onnx(fx.model, output, fx.meta, cameras=False if args.no_cameras else None,
                opset=args.opset)
    summary: dict[str, Any] = {"onnx": output}
    print(f"exported {fx.meta['model_name']} -> {output}")
    if args.no_check:
        return summary
    parity = check_parity(fx, output, _root(args, fx.meta), synthetic_spec_of(fx.meta),
                          batch_size=args.batch_size, atol=args.atol)
    summary["parity"] = parity
    print(f"parity on a real batch of {parity['batch']}: max |torch - onnxruntime| = "
          f"{parity['max_abs_diff']:.2e} (tolerance {parity['atol']:.0e})")
    print(f"synthetic test split ({parity['num_query']} queries): "
          f"torch mAP {100 * parity['torch']['mAP']:.2f}% R1 {100 * parity['torch']['R1']:.2f}%"
          f" | onnxruntime mAP {100 * parity['onnxruntime']['mAP']:.2f}% "
          f"R1 {100 * parity['onnxruntime']['R1']:.2f}% | identical ranking: "
          f"{parity['same_ranking']}")
    write_json(parity, osp.splitext(output)[0] + ".parity.json")
    if not parity["ok"]:
        raise ParityError(f"ONNX Runtime differs from PyTorch: {json.dumps(parity)}")
    return summary


# ----------------------------------------------------------------------------- console

def cli(main: Callable[[Sequence[str] | None], Any], name: str,
        argv: Sequence[str] | None = None) -> int:
    """Run ``main``; input errors exit 2 and a failed parity check exits 1, each with one
    line on stderr."""
    try:
        main(argv)
    except ParityError as exc:
        sys.stderr.write(f"{name}: parity check failed: {exc}\n")
        return 1
    except (FileNotFoundError, ValueError, KeyError, TypeError, ImportError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        sys.stderr.write(f"{name}: error: {msg}\n")
        return 2
    return 0


def extract_entry() -> int:
    """Console script ``torchreid-sdtps-extract``."""
    return cli(main_extract, "torchreid-sdtps-extract")


def search_entry() -> int:
    """Console script ``torchreid-sdtps-search``."""
    return cli(main_search, "torchreid-sdtps-search")


def export_entry() -> int:
    """Console script ``torchreid-sdtps-export``."""
    return cli(main_export, "torchreid-sdtps-export")
