"""``torchreid-sdtps-export`` (``tools/export.py``): a checkpoint to ONNX, then the ONNX
Runtime parity check on the checkpoint's own data set.

The ONNX file appears under its name only when the parity check passed (or was skipped with
``--no-check``); a failed check leaves the report ``<output>.parity.json`` and exits 1.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
from typing import Any

from ..errors import ConfigError
from .extract import make_extractor
from .runner import Command, add_model_arguments

__all__ = ["main", "COMMAND", "console", "format_parity"]

logger = logging.getLogger(__name__)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..deploy.onnx import PARITY_MAP_TOL, PARITY_RTOL

    add_model_arguments(parser)
    parser.add_argument("-o", "--output", default="", help="ONNX file (default: beside "
                        "the checkpoint, .onnx)")
    parser.add_argument("--no-cameras", action="store_true",
                        help="export without the cam_label input (SIE term left out)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (exporter default)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")
    parser.add_argument("--dataset", default="", help="parity data set (default: the "
                        "checkpoint's first test target)")
    parser.add_argument("--root", default="", help="its data root (default: the checkpoint's)")
    parser.add_argument("--rtol", type=float, default=PARITY_RTOL,
                        help="max |torch - onnxruntime| / max feature norm accepted")
    parser.add_argument("--map-tol", type=float, default=PARITY_MAP_TOL,
                        help="max mAP / R1 difference (fraction) accepted")


def format_parity(parity: dict[str, Any]) -> str:
    """The parity report as three lines of text."""
    data = parity["data"]
    where = f"{data['dataset']}" + (" (synthetic fallback)" if data.get("fallback") else "")
    t, o = parity["torch"], parity["onnxruntime"]
    top = next((v for k, v in parity.items() if k.startswith("top") and k.endswith("_identical")),
               None)
    return (f"parity on a real batch of {parity['batch']}: max |torch - onnxruntime| = "
            f"{parity['max_abs_diff']:.2e} = {parity['rel_diff']:.2e} of the largest feature "
            f"norm {parity['max_feature_norm']:.3g} (tolerance {parity['rtol']:.0e}), min cosine "
            f"{parity['min_cosine']:.8f}\n"
            f"{where} test split ({parity['num_query']} queries, {parity['num_gallery']} "
            f"gallery): features within {parity['split_rel_diff']:.2e} of the largest norm, "
            f"distances within {parity['dist_rel_diff']:.2e} of the largest\n"
            f"torch mAP {100 * t['mAP']:.2f}% R1 {100 * t['R1']:.2f}% | onnxruntime mAP "
            f"{100 * o['mAP']:.2f}% R1 {100 * o['R1']:.2f}% (tolerance "
            f"{100 * parity['metric_tol']:.2f} points) | identical top-10: "
            f"{100 * (top if top is not None else 1.0):.1f}% of queries")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from ..deploy.onnx import ParityError, check_parity, export_onnx
    from ..io import atomic_path, write_json

    if args.no_check and (args.dataset or args.root):
        raise ConfigError("--dataset/--root choose the parity data; they mean nothing with "
                          "--no-check")
    if args.rtol <= 0 or args.map_tol < 0:
        raise ConfigError(f"--rtol must be > 0 and --map-tol >= 0; got {args.rtol}, "
                          f"{args.map_tol}")
    args.device = "cpu"
    fx = make_extractor(args)
    output = args.output or osp.splitext(args.weights)[0] + ".onnx"
    if osp.abspath(output) == osp.abspath(args.weights):
        output += ".onnx"
    summary: dict[str, Any] = {"onnx": output}
    with atomic_path(output, suffix=".onnx") as tmp:  # in place only once checked
        export_onnx(fx.model, tmp, fx.meta, cameras=False if args.no_cameras else None,
                    opset=args.opset)
        print(f"exported {fx.meta['model_name']} -> {output}")
        if not args.no_check:
            parity = check_parity(fx, tmp, args.root, batch_size=args.batch_size,
                                  rtol=args.rtol, dataset=args.dataset, map_tol=args.map_tol)
            summary["parity"] = parity
            print(format_parity(parity))
            report = output + ".parity.json"
            write_json(parity, report)
            summary["parity_report"] = report
            print(f"parity report -> {report}")
            if not parity["ok"]:
                raise ParityError(
                    f"ONNX Runtime differs from PyTorch beyond the tolerance (report: "
                    f"{report}); '{output}' was not written")
    return summary


COMMAND = Command("export", "Export a checkpoint to ONNX and check it against PyTorch",
                  _add_arguments, _run)


#: ``main(argv)``: Parse ``argv``, export and check; returns the summary (errors propagate)
main = COMMAND.main
console = COMMAND.console
