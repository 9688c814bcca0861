#!/usr/bin/env python
"""Gallery search at scale: exact chunked search versus FAISS indexes.

It writes a gallery of ``--gallery`` N clustered, re-id-like features of size ``--dim`` D into
a feature store on disk (chunk by chunk, never the whole gallery in memory) and ``--queries``
Q queries of the same identities into a second store. The features: identities with a
varying number of samples (1 to 2x ``--per-id``), each identity a point of a 32-dimensional
latent space (around one of many "look" centers) mapped into D dimensions, each sample its
identity's point plus within-identity variation and isotropic noise, L2-normalised like the
model's ``--normalize`` output (so the FAISS indexes use inner product).

Each backend then runs in a FRESH process (its peak RSS is its own): ``exact`` (the chunked
torch search of ``torchreid_sdtps.deploy.exact``, reading the store block by block),
``faiss_flat``, ``faiss_ivf_flat``, ``faiss_ivf_pq`` (re-ranked from the store) and
``faiss_hnsw`` (``torchreid_sdtps.deploy.index``). Reported per backend: ``build_s`` (index
build, training and save; 0 for exact), ``qps`` (Q / search seconds, all queries in one
call), ``recall_at_10`` (mean share of the exact top-10 found) and ``peak_rss_gb``
(the process's peak resident memory, ``VmHWM``: it includes the torch import and the pages
of the mapped store it touched; see :func:`peak_rss_gb`).

    python benchmarks/bench_search.py --gallery 300000 --dim 1536 --queries 500
    python benchmarks/bench_search.py --gallery 2000 --dim 32 --queries 20 --json   # seconds

``--json`` prints ``{"backends": {name: {build_s, qps, recall_at_10, peak_rss_gb}}}`` (the
table goes to stderr); ``--out FILE`` writes the markdown report between
``<!-- bench_search:begin -->`` and ``<!-- bench_search:end -->`` of FILE.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

HERE = osp.dirname(osp.abspath(__file__))
try:
    from torchreid_sdtps.deploy.store import FeatureStore
    from torchreid_sdtps.deploy.store_writer import StoreWriter
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(HERE))
    from torchreid_sdtps.deploy.store import FeatureStore
    from torchreid_sdtps.deploy.store_writer import StoreWriter

__all__ = ["make_stores", "run_backend", "run", "format_report", "main", "peak_rss_gb", "BACKENDS"]

BEGIN, END = "<!-- bench_search:begin -->", "<!-- bench_search:end -->"
BACKENDS: tuple[str, ...] = ("exact", "faiss_flat", "faiss_ivf_flat", "faiss_ivf_pq",
                             "faiss_hnsw")
LATENT = 32


def _features(rng: np.random.Generator, ids: np.ndarray, centers: np.ndarray,
              proj: np.ndarray, noise: float) -> np.ndarray:
    """Normalised samples of identities ``ids``: latent center + within-identity variation,
    mapped to D, plus isotropic noise (``noise`` x the signal's norm)."""
    z = centers[ids] + 0.45 * rng.standard_normal((len(ids), LATENT), dtype=np.float32)
    x = z @ proj
    x += (noise / np.sqrt(x.shape[1])) * np.linalg.norm(x, axis=1, keepdims=True) * \
        rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_stores(folder: str, n: int, dim: int, queries: int, per_id: int = 10, seed: int = 0,
                chunk: int = 20000, noise: float = 0.3) -> tuple[str, str]:
    """Write the gallery and query stores into ``folder``; returns their paths.

    Identities have 1 to ``2 * per_id - 1`` samples; their latent centers sit around one of
    ``num_ids // 100`` "look" centers (clothes, vehicle models: re-id galleries hold many
    similar-looking identities), spread 0.7 around them; a sample adds 0.45 of within-id
    variation. Rank-1 of a query among the gallery is about 0.9 at these settings.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 2 * per_id, size=n // per_id * 2 + 1)
    ids = np.repeat(np.arange(len(sizes)), sizes)[:n]
    num_ids = int(ids[-1]) + 1
    looks = rng.standard_normal((max(16, num_ids // 100), LATENT), dtype=np.float32)
    centers = looks[rng.integers(0, len(looks), num_ids)] + \
        0.7 * rng.standard_normal((num_ids, LATENT), dtype=np.float32)
    proj = rng.standard_normal((LATENT, dim), dtype=np.float32) / np.sqrt(LATENT)
    info = {"model": "bench_search synthetic", "normalized": True}
    prov = {"model": "bench_search synthetic", "dim": dim}
    paths = {}
    for name, count, pick in (("gallery", n, None),
                              ("query", queries, rng.choice(num_ids, size=queries))):
        paths[name] = osp.join(folder, f"{name}.store")
        with StoreWriter(paths[name], count, dim, 1, normalized=True, info=info,
                         provenance=prov, overwrite=True) as w:
            for start in range(0, count, chunk):
                sel = ids[start:start + chunk] if pick is None else pick[start:start + chunk]
                w.write(_features(rng, sel, centers, proj, noise), pids=sel,
                        paths=[(f"{name}/{i}.jpg",) for i in range(start, start + len(sel))])
    return paths["gallery"], paths["query"]


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB: ``VmHWM`` of /proc/self/status (the
    high-water mark of this process's own address space), else ``ru_maxrss``. Linux carries
    ``ru_maxrss`` over ``fork`` + ``exec``, so a worker's would include the parent's peak
    (the parent wrote the stores); ``VmHWM`` starts afresh at ``exec``."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024 ** 2  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def run_backend(name: str, gallery: str, query: str, k: int, out: str) -> dict[str, Any]:
    """Build (FAISS) and search in this process; the top-k go to ``out`` (.npy)."""
    import torch

    from torchreid_sdtps.deploy.exact import topk_exact
    from torchreid_sdtps.deploy.index import GalleryIndex

    store, queries = FeatureStore(gallery), FeatureStore(query)
    q = queries.rows(0, len(queries))
    build_s = 0.0
    if name == "exact":
        start = time.perf_counter()
        _, index = topk_exact(q, store, k)
    else:
        kind = name[len("faiss_"):]
        t0 = time.perf_counter()
        gi = GalleryIndex.build(store, osp.join(osp.dirname(out), f"{name}.index"), kind,
                                overwrite=True)
        build_s = time.perf_counter() - t0
        start = time.perf_counter()
        _, index = gi.search(torch.from_numpy(q), k)
    search_s = time.perf_counter() - start
    np.save(out, index.numpy())
    return {"build_s": round(build_s, 3), "qps": round(len(q) / search_s, 2),
            "peak_rss_gb": round(peak_rss_gb(), 3), "search_s": round(search_s, 3)}


def _spawn(name: str, gallery: str, query: str, k: int, out: str) -> dict[str, Any]:
    cmd = [sys.executable, osp.abspath(__file__), "--worker", name, "--gallery-store", gallery,
           "--query-store", query, "--k", str(k), "--result", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"backend {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(n: int, dim: int, queries: int, backends: Sequence[str] = BACKENDS, k: int = 10,
        workdir: str | None = None, per_id: int = 10) -> dict[str, Any]:
    """The whole benchmark; see the module doc."""
    folder = workdir or tempfile.mkdtemp(prefix="bench_search.")
    try:
        t0 = time.perf_counter()
        gallery, query = make_stores(folder, n, dim, queries, per_id=per_id)
        gen_s = time.perf_counter() - t0
        print(f"[bench_search] N={n} stores written in {gen_s:.0f} s", file=sys.stderr,
              flush=True)
        order = ["exact", *[b for b in backends if b != "exact"]]
        results: dict[str, Any] = {}
        for name in order:
            out = osp.join(folder, f"{name}.npy")
            results[name] = _spawn(name, gallery, query, k, out)
            found = np.load(out)
            truth = np.load(osp.join(folder, "exact.npy"))
            hits = [len(set(a[:10]) & set(b[:10])) / min(10, truth.shape[1])
                    for a, b in zip(found, truth)]
            results[name]["recall_at_10"] = round(float(np.mean(hits)), 4)
            print(f"[bench_search] N={n} {name}: {results[name]}", file=sys.stderr, flush=True)
            shutil.rmtree(osp.join(folder, f"{name}.index"), ignore_errors=True)
        raw_gb = n * dim * 4 / 1024 ** 3
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return {"backends": {b: {key: results[b][key] for key in
                             ("build_s", "qps", "recall_at_10", "peak_rss_gb")}
                         for b in order if b in backends or b == "exact"},
            "raw_features_gb": round(raw_gb, 3), "generate_s": round(gen_s, 1), "n": n,
            "dim": dim, "queries": queries}


def format_report(r: dict[str, Any], command: str = "") -> str:
    """The markdown table with the targets."""
    from _common import machine, now

    b = r["backends"]
    lines = [f"N = {r['n']:,} gallery features x D = {r['dim']:,} (float32, "
             f"{r['raw_features_gb']:.2f} GiB raw), {r['queries']} queries, top-10. "
             f"{now()}; {machine()}.", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += ["| backend | build (s) | queries/s | x exact | recall@10 | peak RSS (GiB) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, v in b.items():
        lines.append(f"| {name} | {v['build_s']:.1f} | {v['qps']:.1f} | "
                     f"{v['qps'] / b['exact']['qps']:.1f} | {v['recall_at_10']:.3f} | "
                     f"{v['peak_rss_gb']:.2f} |")
    approx = [n for n in b if n not in ("exact", "faiss_flat")]
    ok = [n for n in approx if b[n]["recall_at_10"] >= 0.95
          and b[n]["qps"] >= 10 * b["exact"]["qps"]]
    lines += ["", f"- approximate index with recall@10 >= 0.95 at >= 10x the exact queries/s: "
              f"{'PASS (' + ', '.join(ok) + ')' if ok else 'FAIL'}",
              f"- exact search peak RSS {b['exact']['peak_rss_gb']:.2f} GiB <= 2x raw features "
              f"({2 * r['raw_features_gb']:.2f} GiB): "
              f"{'PASS' if b['exact']['peak_rss_gb'] <= 2 * r['raw_features_gb'] else 'FAIL'}"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gallery", type=int, default=300000, help="gallery size N")
    p.add_argument("--dim", type=int, default=1536, help="feature size D")
    p.add_argument("--queries", type=int, default=500, help="number of queries Q")
    p.add_argument("--per-id", type=int, default=10, help="mean samples per identity")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--workdir", default=None, help="keep the stores here (default: a temporary "
                   "folder, removed at the end)")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    p.add_argument("--out", default="", help="write the report into this markdown file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--gallery-store", default="", help=argparse.SUPPRESS)
    p.add_argument("--query-store", default="", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.gallery, args.dim, args.queries, args.per_id) < 1:
        p.error("--gallery, --dim, --queries and --per-id must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        r = run_backend(args.worker, args.gallery_store, args.query_store, args.k, args.result)
        print(json.dumps(r))
        return r
    r = run(args.gallery, args.dim, args.queries, args.backends, workdir=args.workdir,
            per_id=args.per_id)
    sys.path.insert(0, HERE)
    from _common import command_line, write_section

    report = format_report(r, command_line("bench_search.py", argv))
    if args.json:
        print(json.dumps({"backends": r["backends"]}, indent=1))
        print(report, file=sys.stderr)
    else:
        print(report)
    if args.out:
        write_section(args.out, "### Gallery search (`benchmarks/bench_search.py`)\n\n" + report,
                      BEGIN, END)
    return r


if __name__ == "__main__":
    main()
