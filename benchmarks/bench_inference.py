#!/usr/bin/env python
"""Inference speed: PyTorch eager versus ONNX Runtime on the CPU.

For each model (default ``sdtps_vit_tiny`` at 128x64 and ``sdtps_clip_vit_b16`` at 256x128,
M=3 modalities, random weights, no SIE) and batch size (default 1 and 32 samples = 3 and 96
images) it measures, in one process and on the same input:

* eager: the model built by :class:`torchreid_sdtps.deploy.FeatureExtractor` (eval, no grad);
* ONNX Runtime: the same weights exported by :func:`torchreid_sdtps.deploy.onnx.export_onnx`
  and run by :class:`~torchreid_sdtps.deploy.onnx.OrtForward` (CPU provider);

both with the same number of threads; the two are timed round-robin (eager, ORT, eager, ...)
so a busy machine slows them alike. Reported: median latency per batch, samples/s
(batch / median latency) and the ratio ORT/eager of samples/s, plus the max abs difference of
their features on the timed input.

    python benchmarks/bench_inference.py --threads 2 --out benchmarks/RESULTS.md
    python benchmarks/bench_inference.py --smoke          # tiny model at 64x32, seconds

``--out FILE`` writes the markdown report between ``<!-- bench_inference:begin -->`` and
``<!-- bench_inference:end -->`` of FILE (the rest of FILE is kept).
"""
from __future__ import annotations

import argparse
import datetime
import os.path as osp
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

try:
    from torchreid_sdtps.deploy.onnx import OrtForward, export_onnx
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from torchreid_sdtps.deploy.onnx import OrtForward, export_onnx
from torchreid_sdtps.deploy import FeatureExtractor

__all__ = ["bench_model", "run", "format_report", "main"]

BEGIN, END = "<!-- bench_inference:begin -->", "<!-- bench_inference:end -->"
#: model -> input (H, W) of the default run
MODELS = {"sdtps_vit_tiny": (128, 64), "sdtps_clip_vit_b16": (256, 128)}


def _time(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_model(name: str, size: tuple[int, int], batches: Sequence[int], iters: int,
                warmup: int, threads: int, workdir: str) -> dict[str, Any]:
    """Time eager and ONNX Runtime on ``name`` for each batch size; see the module doc."""
    fx = FeatureExtractor(opts=["model.name", name, "model.pretrained", "False", "use_gpu",
                                "False", "data.height", str(size[0]), "data.width",
                                str(size[1])], device="cpu")
    start = time.perf_counter()
    path = export_onnx(fx.model, osp.join(workdir, f"{name}.onnx"), fx.meta)
    export_s = time.perf_counter() - start
    ort = OrtForward(path, threads=threads)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        x = torch.randn(b, *fx.input_shape, generator=gen)
        for _ in range(warmup):
            fx.forward(x, None), ort(x)
        eager, onnx = [], []
        for _ in range(iters):  # round-robin: load changes hit both alike
            eager.append(_time(fx.forward, x, None))
            onnx.append(_time(ort, x))
        diff = float((fx.forward(x, None) - ort(x)).abs().max())
        e, o = statistics.median(eager), statistics.median(onnx)
        rows.append({"batch": b, "images": b * fx.input_shape[0], "eager_ms": 1e3 * e,
                     "onnx_ms": 1e3 * o, "eager_sps": b / e, "onnx_sps": b / o,
                     "speedup": e / o, "max_abs_diff": diff, "iters": iters})
    return {"model": name, "size": list(size), "export_s": export_s, "rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    models = {"sdtps_vit_tiny": (64, 32)} if args.smoke else {m: MODELS[m] for m in args.models}
    with tempfile.TemporaryDirectory(prefix="bench_inference.") as tmp:
        results = [bench_model(m, size, args.batches, args.iters, args.warmup, args.threads, tmp)
                   for m, size in models.items()]
    from bench_cost import machine  # same machine line as the cost benchmark

    return {"machine": machine("cpu"), "threads": args.threads, "results": results,
            "date": datetime.date.today().isoformat()}


def format_report(r: dict[str, Any], command: str) -> str:
    lines = ["### Inference: PyTorch eager vs ONNX Runtime (`benchmarks/bench_inference.py`)",
             "", f"`{command}` ({r['date']}; {r['machine']}; ORT intra-op threads "
             f"{r['threads']}). Random weights, 3 modalities, eval mode, no SIE; median of the "
             "round-robin timings.", "",
             "| model | input | batch (images) | eager ms/batch | ORT ms/batch | eager samples/s "
             "| ORT samples/s | ORT / eager | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in r["results"]:
        for row in res["rows"]:
            lines.append(
                f"| {res['model']} | {res['size'][0]}x{res['size'][1]} | {row['batch']} "
                f"({row['images']}) | {row['eager_ms']:.1f} | {row['onnx_ms']:.1f} | "
                f"{row['eager_sps']:.2f} | {row['onnx_sps']:.2f} | {row['speedup']:.2f}x | "
                f"{row['max_abs_diff']:.1e} |")
    lines += ["", "Export time (torch.onnx dynamo exporter): " + ", ".join(
        f"{res['model']} {res['export_s']:.0f} s" for res in r["results"]) + "."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--iters", type=int, default=5, help="timed calls per backend")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default="", help="also write the raw numbers here")
    parser.add_argument("--out", default="", help="markdown file whose marked section to rewrite")
    parser.add_argument("--smoke", action="store_true",
                        help="sdtps_vit_tiny at 64x32 only (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.iters, args.warmup = [1, 2], 1, 0
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    r = run(args)
    command = "python benchmarks/bench_inference.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:])
    report = format_report(r, command.strip())
    print(report)
    if args.json:
        from torchreid_sdtps.io import write_json

        write_json(r, args.json)
    if args.out:
        from synthetic_study import write_section

        write_section(args.out, report, BEGIN, END)
    return r


if __name__ == "__main__":
    main()
