"""``torchreid-sdtps-extract`` (``tools/extract.py``): features of a data set split or of a
folder of RGB/NI/TI triples to a feature store (:mod:`torchreid_sdtps.deploy.store`: a folder
of memory-mappable arrays, written chunk by chunk with a progress bar) or, for an output
ending in ``.pt``, the single-file format of earlier versions; both record how the features
were made (provenance).

The model is rebuilt from the checkpoint's meta and loaded strictly; ``KEY VALUE`` overrides
change the checkpoint's training config (a different model name is refused by the strict
load, with the keys that do not fit).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from ..errors import ConfigError
from .runner import Command, add_model_arguments

__all__ = ["make_extractor", "data_root", "main", "COMMAND", "console"]

logger = logging.getLogger(__name__)


def make_extractor(args: argparse.Namespace, **kwargs: Any) -> Any:
    """The :class:`~torchreid_sdtps.deploy.extractor.FeatureExtractor` of ``--weights`` with
    ``--config-file`` and the overrides."""
    from ..deploy.extractor import FeatureExtractor

    return FeatureExtractor(args.weights, config_file=args.config_file, opts=args.opts,
                            device=args.device, batch_size=args.batch_size, **kwargs)


def data_root(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """``--root``, else the data root of the checkpoint's training config."""
    from ..deploy.extractor import train_config

    cfg = train_config(meta)
    return args.root or (str(cfg.data.root) if cfg is not None else "reid-data")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
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
    parser.add_argument("-o", "--output", required=True,
                        help="feature store folder to write (replaced if it is one), or a "
                        ".pt file (one torch.save file, loaded whole)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16"),
                        help="feature type of a store (default float32; float16 halves it)")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.samples import dataset_samples
    from ..deploy import provenance
    from ..deploy.extractor import synthetic_spec_of
    from ..deploy.features import extract_samples, folder_samples, save_features

    fx = make_extractor(args, normalize=args.normalize, verbose=True)
    use_cams = bool(fx.num_cameras)
    if args.onnx:
        from ..deploy.onnx import OrtForward

        ort = OrtForward(args.onnx)
        fx = fx.with_forward(ort)
        use_cams = use_cams and "cam_label" in ort.inputs
    info: dict[str, Any] = {"weights": args.weights, "model": fx.meta["model_name"],
                            "normalized": args.normalize,
                            "backend": "onnxruntime" if args.onnx else "torch"}
    to_store = not args.output.endswith(".pt")
    if args.dtype and not to_store:
        raise ConfigError("--dtype applies to feature stores; a .pt file holds float32")
    if args.dataset:
        paths, pids, camids, cams = dataset_samples(args.dataset, args.split,
                                                    data_root(args, fx.meta),
                                                    synthetic_spec_of(fx.meta))
        info.update(dataset=args.dataset, split=args.split)
        cams = cams if use_cams else []
        source = "the data set's camera labels"
    else:
        dirs = args.modality_dirs or list(fx.modalities)
        paths = folder_samples(args.folder, dirs, fx.modalities)
        cams = [args.cam] * len(paths) if args.cam is not None else []
        pids, camids = [], cams
        if fx.num_cameras and not cams:
            logger.warning("model '%s' has an SIE camera embedding but no --cam was given: the "
                           "camera term is left out (recorded in the file; a gallery extracted "
                           "with camera ids will refuse these features)", fx.meta["model_name"])
        source = f"--cam {args.cam}"
        info["folder"] = args.folder

    def record(dim: int) -> dict[str, Any]:
        return provenance.record(fx, args.weights, dim, cameras_given=bool(cams),
                                 camera_source=source, backend=info["backend"])

    if to_store:
        from ..deploy.store_writer import extract_to_store

        fx.verbose = False  # one bar over the whole split instead of one per chunk
        store = extract_to_store(fx, args.output, paths, pids, camids, cams, info=info,
                                 provenance=record, dtype=args.dtype or "float32",
                                 overwrite=True)
        num, dim = len(store), store.dim
    else:
        fs = extract_samples(fx, paths, pids, camids, cams, info)
        fs.info["provenance"] = record(int(fs.features.shape[1]))
        save_features(fs, args.output)
        num, dim = len(fs), int(fs.features.shape[1])
    print(f"{num} samples x {dim} features -> {args.output}")
    return {"output": args.output, "num": num, "dim": dim}


COMMAND = Command("extract", "Extract multi-modal features to a file (features, ids, cameras, "
                  "paths, provenance)", _add_arguments, _run)


#: ``main(argv)``: Parse ``argv`` and extract; returns a summary (errors propagate)
main = COMMAND.main
console = COMMAND.console
