"""``torchreid-sdtps-index`` (``tools/index.py``): FAISS indexes over a gallery feature store.

* ``build STORE [-o DIR] [--kind flat|ivf_flat|ivf_pq|hnsw] [parameters]``: build an index
  (default folder ``STORE.index``, beside the store) with the metric the features call for;
* ``add DIR STORE``: append the samples of another store (same model: provenance) to the
  index and to its gallery store, without rebuilding;
* ``info DIR``: what the index holds (kind, metric, size, parameters, provenance).

``torchreid-sdtps-search --index DIR`` searches it. Needs ``faiss`` (``pip install
'torchreid-sdtps[index]'``; ``faiss-gpu`` is used when installed and a GPU is present).
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..errors import ConfigError
from .runner import Command, HelpFormatter

__all__ = ["main", "COMMAND", "console"]

logger = logging.getLogger(__name__)

_PARAMS = ("nlist", "nprobe", "train_size", "m", "nbits", "refine", "hnsw_m",
           "ef_construction", "ef_search")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..deploy.index import KINDS

    sub = parser.add_subparsers(dest="action", required=True, metavar="{build,add,info}")
    build = sub.add_parser("build", help="build an index over a feature store",
                           formatter_class=HelpFormatter)
    build.add_argument("store", help="gallery feature store (torchreid-sdtps-extract -o DIR)")
    build.add_argument("-o", "--output", default="",
                       help="index folder (default: STORE.index, beside the store)")
    build.add_argument("--kind", default="ivf_flat", choices=KINDS,
                       help="flat: exact; ivf_flat / ivf_pq / hnsw: approximate, for large "
                       "galleries")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index")
    build.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                       help="gpu: faiss-gpu (auto: when present)")
    group = build.add_argument_group("index parameters (default: sized to the gallery)")
    for name in _PARAMS:
        group.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    add = sub.add_parser("add", help="append a store's samples to an index and its gallery")
    add.add_argument("index", help="index folder")
    add.add_argument("store", help="feature store of the new gallery samples")
    add.add_argument("--allow-mismatch", action="store_true",
                     help="add features made differently (a warning instead of an error)")
    info = sub.add_parser("info", help="what an index holds")
    info.add_argument("index", help="index folder")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from ..deploy.index import GalleryIndex

    if args.opts:
        raise ConfigError(f"torchreid-sdtps-index takes no config overrides; got {args.opts}")
    if args.action == "build":
        params = {k: getattr(args, k) for k in _PARAMS}
        out = args.output or args.store.rstrip("/\\") + ".index"
        index = GalleryIndex.build(args.store, out, args.kind, overwrite=args.overwrite,
                                   device=args.device, **params)
        print(f"{index.meta['kind']} index ({index.meta['metric']}) of {index.index.ntotal} "
              f"samples x {index.meta['dim']} built in {index.meta['build_s']:.1f} s -> {out}")
        return index.info()
    index = GalleryIndex.open(args.index)
    if args.action == "add":
        total = index.add(args.store, allow_mismatch=args.allow_mismatch)
        print(f"added '{args.store}': {total} samples in '{args.index}' and its store "
              f"'{index.store.path}'")
        return index.info()
    summary = index.info()
    print(json.dumps(summary, indent=1))
    return summary


COMMAND = Command("index", "Build, extend and inspect FAISS indexes over a gallery feature "
                  "store", _add_arguments, _run)


#: ``main(argv)``: Parse ``argv`` and run the action; returns the index summary (errors propagate)
main = COMMAND.main
console = COMMAND.console
