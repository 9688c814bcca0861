"""``torchreid-sdtps-search`` (``tools/search.py``): queries (a feature store or file, or one
sample's images) against a gallery feature store or file, or a FAISS index of one
(``--index``); top-k table and JSON.

Without ``--index`` the search is exact and runs in bounded memory (chunks of the gallery
against chunks of the queries, :func:`torchreid_sdtps.deploy.exact.topk_exact`).

Query and gallery must have been made the same way (model, checkpoint, normalisation, camera
term...; :mod:`torchreid_sdtps.deploy.provenance`): a difference is refused, or with
``--allow-mismatch`` reported as a warning. An ``--images`` query on a model with an SIE camera
embedding needs ``--cam``.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
from typing import Any

from ..errors import ConfigError
from .extract import make_extractor
from .runner import Command, add_model_arguments

__all__ = ["main", "COMMAND", "console", "format_search"]

logger = logging.getLogger(__name__)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..deploy.exact import METRICS

    parser.add_argument("--gallery", default="", help="gallery feature store (or .pt file); "
                        "optional with --index")
    parser.add_argument("--index", default="", help="search this FAISS index "
                        "(torchreid-sdtps-index build) instead of the exact search")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="IVF cells searched (--index of kind ivf_*; default: the index's)")
    parser.add_argument("--ef-search", type=int, default=None,
                        help="HNSW search breadth (--index of kind hnsw; default: the index's)")
    q = parser.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="query feature store (or .pt file)")
    q.add_argument("--images", nargs="+", help="one query sample: one image per modality "
                   "('none' for a missing one); needs --weights")
    add_model_arguments(parser, required=False)
    parser.add_argument("--cam", type=int, default=None,
                        help="camera id of --images (required for SIE models)")
    parser.add_argument("--topk", type=int, default=10,
                        help="results per query (fewer when the gallery or an --index search "
                        "holds fewer: said once, and recorded in the JSON)")
    parser.add_argument("--fill-exact", action="store_true",
                        help="complete the queries an --index search returns fewer than "
                        "--topk results for with the exact search")
    parser.add_argument("--metric", default="euclidean", choices=METRICS)
    parser.add_argument("--threshold", type=float, default=None,
                        help="distance above which a gallery entry is no match")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="search even when query and gallery were made differently "
                        "(a warning instead of an error)")
    parser.add_argument("--json", default="", help="write the results here (JSON)")


def _image_query(args: argparse.Namespace, gallery: Any) -> Any:
    from ..deploy import provenance
    from ..deploy.features import extract_samples

    if not args.weights:
        raise ConfigError("--images needs --weights (the checkpoint that extracted the gallery)")
    grec = provenance.provenance_of(gallery)
    normalized = bool(grec["normalized"] if grec else gallery.info.get("normalized", False))
    fx = make_extractor(args, normalize=normalized)
    if fx.num_cameras and args.cam is None and (grec is None or grec["camera_term"] != "off"):
        raise ConfigError(
            f"model '{fx.meta['model_name']}' adds an SIE camera embedding to its features: "
            f"pass --cam ID, the camera the query images come from (0..{fx.num_cameras - 1}, "
            "as in the gallery's data set); without it the query's features lack the camera "
            "term and are not comparable to the gallery's")
    sample = tuple(None if p.lower() == "none" else p for p in args.images)
    cams = [args.cam] if args.cam is not None else []
    query = extract_samples(fx, [sample], camids=cams, cam_labels=cams)
    query.paths = [tuple(str(p) for p in args.images)]
    query.info["provenance"] = provenance.record(
        fx, args.weights, int(query.features.shape[1]), cameras_given=bool(cams),
        camera_source=f"--cam {args.cam}")
    return query


def _cam(camid: int) -> str:
    """A camera id as file names write it (``cam1`` is camid 0); ``-`` when unknown."""
    return str(camid + 1) if camid >= 0 else "-"


def format_search(results: list[dict[str, Any]], metric: str = "euclidean") -> str:
    """The search results as a plain-text table (one block per query); cameras 1-based as in
    the file names (the JSON keeps torchreid's 0-based ``camid``)."""
    lines = []
    for res in results:
        q = res["query"]
        lines.append(f"query {q['index']}: {q['paths'][0]} (pid {q['pid']}, "
                     f"cam {_cam(q['camid'])})")
        if res["no_match"]:
            lines.append("  no match within the distance threshold")
            continue
        lines.append(f"  {'rank':>4}  {metric + ' dist':>14}  {'pid':>6}  {'cam':>4}  gallery")
        for m in res["matches"]:
            lines.append(f"  {m['rank']:>4}  {m['distance']:>14.4f}  {m['pid']:>6}  "
                         f"{_cam(m['camid']):>4}  {m['paths'][0]}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from ..deploy.exact import rank_results, topk_exact
    from ..deploy.provenance import check_comparable, check_missing
    from ..deploy.store import load_features
    from ..io import write_json

    if args.query:
        unused = [name for name, v in (("--weights", args.weights), ("--cam", args.cam),
                                       ("--config-file", args.config_file),
                                       ("config overrides", args.opts)) if v not in ("", None, [])]
        if unused:
            raise ConfigError(f"{', '.join(unused)} only apply to an --images query (the "
                              "features of a --query file are already extracted)")
    index = None
    if args.index:
        from ..deploy.index import GalleryIndex

        index = GalleryIndex.open(args.index)
        if args.gallery and osp.realpath(args.gallery) != osp.realpath(index.store.path):
            raise ConfigError(f"--gallery '{args.gallery}' is not the store of --index "
                              f"'{args.index}' ('{index.store.path}'); give one of them")
        gallery = index.store
    elif not args.gallery:
        raise ConfigError("give --gallery (a feature store or .pt file) or --index")
    else:
        if args.nprobe is not None or args.ef_search is not None:
            raise ConfigError("--nprobe and --ef-search apply to an --index search")
        gallery = load_features(args.gallery)
    gname = args.gallery or args.index
    query = load_features(args.query) if args.query else _image_query(args, gallery)
    check_comparable(query, gallery, allow_mismatch=args.allow_mismatch,
                     names=(args.query or "the --images query", gname))
    check_missing(query, gallery, names=(args.query or "the --images query", gname))
    if args.fill_exact and index is None:
        raise ConfigError("--fill-exact completes an --index search; without --index the "
                          "search is exact already")
    if index is not None:
        values, found = index.search(query, args.topk, args.metric, nprobe=args.nprobe,
                                     ef_search=args.ef_search, check=False)
    else:
        values, found = topk_exact(query, gallery, args.topk, args.metric)
    values, found, short = _short_of_k(args, query, gallery, values, found)
    results = rank_results(query, gallery, values, found, args.threshold)
    print(format_search(results, args.metric))
    if args.json:
        write_json({"gallery": gallery.path if index is not None else args.gallery,
                    "index": args.index or None, "metric": args.metric, "topk": args.topk,
                    "threshold": args.threshold, "short_of_topk": short, "results": results},
                   args.json)
    return {"results": results, "json": args.json, "short_of_topk": short}


def _short_of_k(args: argparse.Namespace, query: Any, gallery: Any, values: Any, found: Any
                ) -> tuple[Any, Any, dict[str, Any] | None]:
    """Say once (a warning, and the returned record for the JSON) when queries get fewer than
    ``--topk`` results: a gallery smaller than k, or an index search that found fewer in the
    cells it searched (with ``--fill-exact`` those rows are the exact search's instead)."""
    from ..deploy.exact import topk_exact

    k, size = int(args.topk), len(gallery)
    per_query = (found >= 0).sum(dim=1)
    expected = min(k, size)
    short_rows = (per_query < expected).nonzero().flatten().tolist()
    filled: list[int] = []
    if short_rows and args.fill_exact:
        exact_v, exact_i = topk_exact(query, gallery, k, args.metric)
        values, found = values.clone(), found.clone()
        values[short_rows], found[short_rows] = exact_v[short_rows], exact_i[short_rows]
        filled, short_rows = short_rows, []
        per_query = (found >= 0).sum(dim=1)
    if size >= k and not short_rows and not filled:
        return values, found, None
    record: dict[str, Any] = {"topk": k, "gallery_size": size,
                              "returned_min": int(per_query.min()),
                              "returned_max": int(per_query.max()),
                              "short_queries": short_rows, "filled_from_exact": filled}
    notes = []
    if size < k:
        notes.append(f"the gallery holds {size} entries, so each query lists at most {size}")
    if short_rows:
        notes.append(f"the index search returned fewer than {expected} for {len(short_rows)} "
                     f"of {len(found)} queries ({record['returned_min']}-"
                     f"{int(per_query[short_rows].max())} results; --fill-exact completes them "
                     "from the exact search, a larger --nprobe / --ef-search searches wider)")
    if filled:
        notes.append(f"{len(filled)} of {len(found)} queries had fewer than {expected} results "
                     "from the index and were completed from the exact search (--fill-exact)")
    logger.warning("--topk %d: %s", k, "; ".join(notes))
    return values, found, record


COMMAND = Command("search", "Search queries in a gallery feature file; top-k table and JSON",
                  _add_arguments, _run)


#: ``main(argv)``: Parse ``argv`` and search; returns the results (errors propagate)
main = COMMAND.main
console = COMMAND.console
